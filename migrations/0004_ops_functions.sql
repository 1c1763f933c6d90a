-- depends: 0003_ops_views
-- Operator actions as functions, so psql (docs/ops.md) and `embedq-server requeue|purge`
-- run the same code. A failed or pending input belongs to a task whose counters
-- (remaining, failed, error, finished_at) the API reads; changing the inputs without the
-- task would leave clients waiting forever or answering a stale failure.
-- Both lock in the queue's order (inputs, then tasks in id order, as embedq_settle does),
-- so they can run while servers and workers are busy.

-- embedq_requeue_failed: failed inputs back to pending with fresh attempts, and their tasks
-- consistent again (remaining up, failed down, finished_at cleared, error = the oldest
-- failure still left, or none). Filters: a model, a minimum age of the failure, a task.
-- Inputs failed by embedq_purge_pending (error_code 'purged') are left alone.
-- Returns how many inputs and tasks were requeued.
CREATE OR REPLACE FUNCTION embedq_requeue_failed(
    only_model text DEFAULT NULL,
    older_than interval DEFAULT interval '0 seconds',
    only_task uuid DEFAULT NULL
)
RETURNS TABLE (items integer, tasks integer)
LANGUAGE plpgsql AS $$
DECLARE
    item_ids bigint[];
    task_ids uuid[];
    counts integer[];
    models text[];
BEGIN
    SELECT array_agg(id ORDER BY id) INTO item_ids
    FROM (
        SELECT id FROM embedq_item
        WHERE state = 'failed'
          AND error_code IS DISTINCT FROM 'purged'
          AND (only_model IS NULL OR model = only_model)
          AND (only_task IS NULL OR task_id = only_task)
          AND completed_at <= now() - older_than
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    ) picked;
    IF item_ids IS NULL THEN
        RETURN QUERY SELECT 0, 0;
        RETURN;
    END IF;
    PERFORM 1 FROM embedq_task
    WHERE id IN (SELECT task_id FROM embedq_item WHERE id = ANY (item_ids))
    ORDER BY id FOR UPDATE;

    WITH requeued AS (
        UPDATE embedq_item
        SET state = 'pending', attempts = 0, error = NULL, error_code = NULL,
            completed_at = NULL, claimed_at = NULL, worker = NULL,
            lease_token = NULL, lease_expires = NULL
        WHERE id = ANY (item_ids) AND state = 'failed'
        RETURNING task_id, model
    ), per_task AS (
        SELECT task_id, count(*)::integer AS n FROM requeued GROUP BY task_id
    )
    SELECT (SELECT array_agg(task_id ORDER BY task_id) FROM per_task),
           (SELECT array_agg(n ORDER BY task_id) FROM per_task),
           (SELECT array_agg(DISTINCT model) FROM requeued)
    INTO task_ids, counts, models;
    IF task_ids IS NULL THEN
        RETURN QUERY SELECT 0, 0;
        RETURN;
    END IF;

    -- A second statement, so the subquery sees the inputs as they are now.
    UPDATE embedq_task t
    SET remaining = t.remaining + u.n,
        failed = t.failed - u.n,
        finished_at = NULL,
        error = f.error,
        error_code = f.error_code
    FROM unnest(task_ids, counts) AS u(id, n)
    LEFT JOIN LATERAL (
        SELECT i.error, i.error_code FROM embedq_item i
        WHERE i.task_id = u.id AND i.state = 'failed'
        ORDER BY i.completed_at, i.id
        LIMIT 1
    ) f ON true
    WHERE t.id = u.id;

    PERFORM pg_notify('embedq_work', m) FROM unnest(models) AS m;
    RETURN QUERY SELECT (SELECT sum(c)::integer FROM unnest(counts) AS c),
                        cardinality(task_ids);
END
$$;

-- embedq_purge_pending: drop a model's backlog. A task with nothing but pending inputs of it
-- is deleted (with its inputs): nothing of it was computed, and the space comes back at once.
-- A task with some inputs done or in progress keeps them; its pending inputs end failed with
-- error_code 'purged', settled like any failure, so the client gets a clear answer.
-- Inputs a worker holds right now are not touched (they finish or expire as usual).
-- Waiting requests are woken either way. Returns what it did.
CREATE OR REPLACE FUNCTION embedq_purge_pending(only_model text)
RETURNS TABLE (deleted_tasks integer, deleted_items integer, failed_items integer)
LANGUAGE plpgsql AS $$
DECLARE
    item_ids bigint[];
    doomed uuid[];
    n_deleted integer := 0;
    n_failed integer := 0;
    woken integer;
    chunk constant integer := 150;
BEGIN
    IF only_model IS NULL THEN
        RAISE EXCEPTION 'embedq_purge_pending needs a model';
    END IF;
    SELECT array_agg(id ORDER BY id) INTO item_ids
    FROM (
        SELECT id FROM embedq_item
        WHERE state = 'pending' AND model = only_model
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    ) picked;
    IF item_ids IS NULL THEN
        RETURN QUERY SELECT 0, 0, 0;
        RETURN;
    END IF;
    PERFORM 1 FROM embedq_task
    WHERE id IN (SELECT task_id FROM embedq_item WHERE id = ANY (item_ids))
    ORDER BY id FOR UPDATE;

    -- Whole tasks: every one of their inputs is among the pending ones picked.
    SELECT array_agg(t.id ORDER BY t.id) INTO doomed
    FROM embedq_task t
    JOIN (
        SELECT task_id, count(*) AS n FROM embedq_item
        WHERE id = ANY (item_ids) GROUP BY task_id
    ) p ON p.task_id = t.id
    WHERE p.n = t.n_inputs;
    IF doomed IS NOT NULL THEN
        SELECT coalesce(sum(n_inputs), 0)::integer INTO n_deleted
        FROM embedq_task WHERE id = ANY (doomed);
        DELETE FROM embedq_task WHERE id = ANY (doomed);
        FOR i IN 1 .. cardinality(doomed) BY chunk LOOP
            PERFORM pg_notify('embedq_done', array_to_string(doomed[i : i + chunk - 1], ','));
        END LOOP;
    END IF;

    WITH purged AS (
        UPDATE embedq_item
        SET state = 'failed', error = 'purged by an operator (embedq-server purge)',
            error_code = 'purged', completed_at = now()
        WHERE id = ANY (item_ids) AND state = 'pending'
        RETURNING task_id, error, error_code
    )
    SELECT count(*)::integer,
           embedq_settle(array_agg(task_id), array_agg(true), array_agg(error),
                         array_agg(error_code))
    INTO n_failed, woken
    FROM purged;

    RETURN QUERY SELECT coalesce(cardinality(doomed), 0), n_deleted, n_failed;
END
$$;
