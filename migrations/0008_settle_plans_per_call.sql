-- depends: 0007_settle_returns_finished
-- embedq_settle_finished runs inside every completion. PL/pgSQL prepares its statements
-- once per connection, and after five calls PostgreSQL keeps one generic plan, costed for
-- the table as it was then. A server that started on a small queue settled every batch by
-- reading the whole task table from then on, until an analyze replanned it (its 32-client
-- completions went 2 -> 8 ms over 40,000 requests). Planned for each call, its two
-- statements look the tasks up by primary key once the table is large; the planning costs
-- a fraction of a millisecond per completion.

ALTER FUNCTION embedq_settle_finished(uuid[], boolean[], text[], text[])
    SET plan_cache_mode = force_custom_plan;
