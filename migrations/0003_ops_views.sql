-- depends: 0002_settle
-- Ops views: what an operator asks psql every day, named so the answers are one SELECT
-- away (docs/ops.md). /metrics and /status read them too, so the numbers agree everywhere.
-- CREATE OR REPLACE keeps the migration idempotent (yoyo may re-run it after a crash);
-- changing a view's columns later needs a DROP VIEW in a new migration.

-- embedq_queue: inputs per model and state; for pending ones, how long the oldest has waited.
CREATE OR REPLACE VIEW embedq_queue AS
SELECT model,
       state,
       count(*) AS items,
       count(DISTINCT task_id) AS tasks,
       min(created_at) FILTER (WHERE state = 'pending') AS oldest_pending_at,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending'))::float8
           AS oldest_pending_seconds
FROM embedq_item
GROUP BY model, state
ORDER BY model, state;

-- embedq_workers: every registered worker, whether it is alive (seen within 60 seconds,
-- the server's default WORKER_ALIVE) and how many inputs it holds under a lease right now.
CREATE OR REPLACE VIEW embedq_workers AS
SELECT w.name,
       w.version,
       w.models,
       w.backend,
       w.host,
       w.started_at,
       w.last_seen,
       extract(epoch FROM now() - w.last_seen)::float8 AS seconds_since_seen,
       w.last_seen > now() - interval '60 seconds' AS alive,
       coalesce(h.items, 0) AS items_in_hand
FROM embedq_worker w
LEFT JOIN (
    SELECT worker, count(*) AS items
    FROM embedq_item
    WHERE state = 'processing'
    GROUP BY worker
) h ON h.worker = w.name
ORDER BY alive DESC, w.name;

-- embedq_failures: failed inputs, newest first, with the task they belong to.
CREATE OR REPLACE VIEW embedq_failures AS
SELECT i.task_id,
       i.id AS item_id,
       i.idx,
       i.model,
       i.error,
       i.error_code,
       i.attempts,
       i.worker,
       i.completed_at
FROM embedq_item i
WHERE i.state = 'failed'
ORDER BY i.completed_at DESC NULLS LAST, i.id DESC;

-- embedq_throughput: completed inputs per minute over the last hour, per model, with the
-- idle minutes present as zeros (so a chart or a sum over it needs no gap filling).
CREATE OR REPLACE VIEW embedq_throughput AS
WITH minutes AS (
    SELECT generate_series(
        date_trunc('minute', now()) - interval '59 minutes',
        date_trunc('minute', now()),
        interval '1 minute'
    ) AS minute
), done AS (
    SELECT model, date_trunc('minute', completed_at) AS minute, count(*) AS completed
    FROM embedq_item
    WHERE state = 'completed'
      AND completed_at >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY 1, 2
), models AS (
    SELECT DISTINCT model FROM done
)
SELECT m.model, t.minute, coalesce(d.completed, 0) AS completed
FROM models m
CROSS JOIN minutes t
LEFT JOIN done d ON d.model = m.model AND d.minute = t.minute
ORDER BY m.model, t.minute;
