-- depends: 0001_queue
-- embedq_settle: account for items that reached a final state (completed or failed).
-- Locks the tasks in id order (so concurrent completions never deadlock), lowers their
-- remaining counts, records the first failure, and sends one NOTIFY per chunk of task ids
-- that finished or failed. NOTIFY carries ids only (payloads are limited to 8000 bytes).

CREATE OR REPLACE FUNCTION embedq_settle(
    task_ids uuid[], failed_flags boolean[], errors text[], codes text[]
)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    woken uuid[];
    chunk constant integer := 150;
BEGIN
    IF task_ids IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
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
    RETURN coalesce(cardinality(woken), 0);
END
$$;
