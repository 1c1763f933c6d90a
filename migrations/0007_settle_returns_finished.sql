-- depends: 0006_inline_vectors
-- embedq_settle_finished: embedq_settle that returns the ids of the tasks it finished or
-- failed (read under its row locks, so concurrent completions of one task agree on which
-- finished it), for the completion to wake exactly those and answer them from the vectors
-- it holds. embedq_settle keeps its signature (the operator functions call it).

CREATE OR REPLACE FUNCTION embedq_settle_finished(
    task_ids uuid[], failed_flags boolean[], errors text[], codes text[]
)
RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    woken uuid[];
    chunk constant integer := 150;
BEGIN
    IF task_ids IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN '{}';
    END IF;
    PERFORM 1 FROM embedq_task WHERE id = ANY (task_ids) ORDER BY id FOR UPDATE;
    WITH settled AS (
        SELECT t AS task_id,
               count(*) AS n,
               count(*) FILTER (WHERE f) AS nf,
               min(e) FILTER (WHERE f) AS err,
               min(c) FILTER (WHERE f) AS code
        FROM unnest(task_ids, failed_flags, errors, codes) AS u(t, f, e, c)
        GROUP BY t
    ), updated AS (
        UPDATE embedq_task t
        SET remaining = t.remaining - s.n,
            failed = t.failed + s.nf,
            error = coalesce(t.error, s.err),
            error_code = coalesce(t.error_code, s.code),
            finished_at = CASE WHEN t.remaining - s.n <= 0 THEN now() ELSE t.finished_at END
        FROM settled s
        WHERE t.id = s.task_id
        RETURNING t.id, t.remaining, s.nf
    )
    SELECT array_agg(id) INTO woken FROM updated WHERE remaining <= 0 OR nf > 0;
    IF woken IS NOT NULL THEN
        FOR i IN 1 .. cardinality(woken) BY chunk LOOP
            PERFORM pg_notify('embedq_done', array_to_string(woken[i : i + chunk - 1], ','));
        END LOOP;
    END IF;
    RETURN coalesce(woken, '{}');
END
$$;

CREATE OR REPLACE FUNCTION embedq_settle(
    task_ids uuid[], failed_flags boolean[], errors text[], codes text[]
)
RETURNS integer
LANGUAGE sql AS $$
    SELECT cardinality(embedq_settle_finished(task_ids, failed_flags, errors, codes));
$$;
