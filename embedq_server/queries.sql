-- submit_tasks --
-- Store the requests that arrived together in one statement, so they share one commit.
-- Per request ($1..$7, one element each): an identical request by the same client that has
-- not failed is reused (a retry attaches to it); otherwise the task and all its inputs
-- ($8..$10: task id, position and text of every input, flattened) are inserted, and inputs
-- found in the result cache (the request's scope, NULL when the cache is off) are stored
-- completed at once. A request given a lease ($11, with its worker $12; NULL for none)
-- is handed to a claim waiting in this process: its other inputs are stored leased to
-- that claim ($13: lease seconds), as a claim would have leased them, without one.
-- A request already handed to that claim before this statement (probe_request said it may
-- be: $14 true) is stored as it was handed: its inputs under the ids it gave ($15, per
-- input; NULL: the next of the sequence), never attached to another task, and (the caller
-- passes no cache scope for it) never answered from the cache.
-- Returns one row per request, with the inputs it leased. The caller wakes the claimers
-- if any input is left pending.
WITH req AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::integer[],
                $6::integer[], $7::text[], $11::uuid[], $12::text[], $14::boolean[])
         AS r(id, owner, fingerprint, model, dimensions, n_inputs, scope, lease, worker, ahead)
), existing AS MATERIALIZED (
    SELECT r.id AS req_id, e.id
    FROM req r
    CROSS JOIN LATERAL (
        SELECT t.id FROM embedq_task t
        WHERE t.owner = r.owner AND t.fingerprint = r.fingerprint AND t.failed = 0
        ORDER BY t.created_at DESC
        LIMIT 1
    ) e
    WHERE NOT r.ahead
), inputs AS (
    SELECT i.task_id, i.idx, i.input, i.id, r.model, r.dimensions, r.scope, r.lease, r.worker
    FROM unnest($8::uuid[], $9::integer[], $10::text[], $15::bigint[])
         AS i(task_id, idx, input, id)
    JOIN req r ON r.id = i.task_id
    WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.req_id = r.id)
), hits AS MATERIALIZED (
    -- One primary-key probe per input (LATERAL ... LIMIT 1): planned as a join, the lookup
    -- walked all of a client's cached rows once the cache grew past its first statistics.
    SELECT i.task_id, i.idx, c.vector, c.tokens, c.model_revision
    FROM inputs i
    CROSS JOIN LATERAL (
        SELECT c.vector, c.tokens, c.model_revision
        FROM embedq_cache c
        WHERE c.scope = i.scope AND c.model = i.model AND c.dimensions = i.dimensions
          AND c.text_hash = sha256(convert_to(i.input, 'UTF8'))
        LIMIT 1
    ) c
    LEFT JOIN embedq_model m ON m.model = i.model
    WHERE i.scope IS NOT NULL AND c.model_revision IS NOT DISTINCT FROM m.revision
), counted AS (
    SELECT r.id, (SELECT count(*)::integer FROM hits h WHERE h.task_id = r.id) AS n
    FROM req r
), task AS (
    INSERT INTO embedq_task (id, owner, fingerprint, model, dimensions, n_inputs, remaining,
                             finished_at)
    SELECT r.id, r.owner, r.fingerprint, r.model, r.dimensions, r.n_inputs, r.n_inputs - c.n,
           CASE WHEN c.n = r.n_inputs THEN now() END
    FROM req r JOIN counted c ON c.id = r.id
    WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.req_id = r.id)
    RETURNING id
), items AS (
    INSERT INTO embedq_item (id, task_id, idx, model, dimensions, input, state, vector,
                             tokens, model_revision, completed_at, lease_token,
                             lease_expires, attempts, worker, claimed_at)
    OVERRIDING SYSTEM VALUE
    SELECT coalesce(i.id, nextval('embedq_item_id_seq')),
           i.task_id, i.idx, i.model, i.dimensions, i.input,
           CASE WHEN h.idx IS NOT NULL THEN 'completed'
                WHEN i.lease IS NOT NULL THEN 'processing'
                ELSE 'pending' END,
           h.vector, h.tokens, h.model_revision,
           CASE WHEN h.idx IS NOT NULL THEN now() END,
           CASE WHEN h.idx IS NULL THEN i.lease END,
           CASE WHEN h.idx IS NULL AND i.lease IS NOT NULL
                THEN now() + make_interval(secs => $13) END,
           CASE WHEN h.idx IS NULL AND i.lease IS NOT NULL THEN 1 ELSE 0 END,
           CASE WHEN h.idx IS NULL THEN i.worker END,
           CASE WHEN h.idx IS NULL AND i.lease IS NOT NULL THEN now() END
    FROM inputs i
    JOIN task t ON t.id = i.task_id
    LEFT JOIN hits h ON h.task_id = i.task_id AND h.idx = i.idx
    RETURNING task_id, idx, id, lease_token
)
SELECT r.id AS req_id, coalesce(e.id, r.id) AS id, e.id IS NOT NULL AS attached,
       c.n AS hits,
       CASE WHEN r.lease IS NOT NULL THEN
           (SELECT array_agg(it.id ORDER BY it.idx) FROM items it
            WHERE it.task_id = r.id AND it.lease_token IS NOT NULL) END AS leased_ids,
       CASE WHEN r.lease IS NOT NULL THEN
           (SELECT array_agg(it.idx ORDER BY it.idx) FROM items it
            WHERE it.task_id = r.id AND it.lease_token IS NOT NULL) END AS leased_idx,
       now() AS created_at
FROM req r
JOIN counted c ON c.id = r.id
LEFT JOIN existing e ON e.req_id = r.id;

-- probe_request --
-- Before the insert, for a request a claim waiting in this process could take: may it
-- be handed to it now, before it is stored (the insert then runs while the worker
-- computes)? Not when the insert might not store it as handed: an identical request by
-- the same client exists (it would attach to it), or an input is in the result cache (in
-- any revision). Otherwise, the ids its inputs will be stored under, in input order.
-- $1..$5: owner, fingerprint, model, dimensions, cache scope or NULL; $6: its inputs.
-- Reads only; the cache is probed by primary key, an input at a time, as in
-- submit_tasks. A plain statement, planned once per connection: one taking arrays of
-- requests was planned afresh for their lengths on every run (0.85-0.95 ms after an
-- idle pause, against 0.46-0.57 for this one).
SELECT EXISTS (
           SELECT 1 FROM embedq_task t
           WHERE t.owner = $1 AND t.fingerprint = $2 AND t.failed = 0
       ) OR EXISTS (
           SELECT 1
           FROM unnest($6::text[]) AS i(input)
           CROSS JOIN LATERAL (
               SELECT 1 FROM embedq_cache c
               WHERE c.scope = $5 AND c.model = $3 AND c.dimensions = $4
                 AND c.text_hash = sha256(convert_to(i.input, 'UTF8'))
               LIMIT 1
           ) c
           WHERE $5 IS NOT NULL
       ) AS blocked,
       ARRAY(SELECT nextval('embedq_item_id_seq')
             FROM generate_subscripts($6::text[], 1) AS s(pos) ORDER BY pos) AS ids;

-- unstored_items --
-- Of these item ids (results refused under their lease), those given out by the sequence
-- but not stored: another server process may have handed them to the worker ahead of
-- their insert (probe_request), which has not committed yet, so the completion tries them
-- again shortly. An id the sequence never gave cannot be stored later.
SELECT coalesce(array_agg(i.id), '{}')
FROM unnest($1::bigint[]) AS i(id)
WHERE i.id <= (SELECT last_value FROM embedq_item_id_seq)
  AND NOT EXISTS (SELECT 1 FROM embedq_item e WHERE e.id = i.id);

-- notify_work --
-- Tell claimers in other server processes that a model has new pending work. Sent at most
-- once per model per few milliseconds (see Queue.announce_work), not in every submit: each
-- notifying commit holds PostgreSQL's global notify lock through its WAL flush.
SELECT pg_notify('embedq_work', $1);

-- get_tasks_with_results --
-- Tasks' summaries, with their vectors and token counts in input order once completed:
-- what woken requests need. Reads of requests woken together go in one statement.
SELECT t.id, t.owner, t.model, t.dimensions, t.n_inputs, t.remaining, t.failed, t.error,
       t.error_code, t.created_at, t.finished_at,
       r.vectors, r.tokens
FROM embedq_task t
LEFT JOIN LATERAL (
    SELECT array_agg(i.vector ORDER BY i.idx) AS vectors,
           array_agg(coalesce(i.tokens, 0) ORDER BY i.idx) AS tokens
    FROM embedq_item i
    WHERE i.task_id = t.id AND t.remaining <= 0 AND t.failed = 0
) r ON true
WHERE t.id = ANY ($1::uuid[]);

-- task_item_states --
-- How a task's inputs are spread over the states, for GET /tasks/{id}.
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'processing') AS processing,
       count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       min(claimed_at) AS started_at
FROM embedq_item
WHERE task_id = $1;

-- pending_count --
-- Inputs waiting for a worker, for backpressure.
SELECT count(*) FROM embedq_item WHERE state = 'pending';

-- claim_items --
-- Lease up to $2 pending inputs of one (model, dimensions) among the worker's models, oldest
-- first. The selection is fenced (MATERIALIZED) so the planner cannot re-run it and update
-- more rows than the limit; SKIP LOCKED lets concurrent claimers pass each other.
-- Both scans start where nothing older is pending (at $6 for the oldest input, a floor the
-- caller keeps, see claimfloor.py; then at that input): every input claimed since the last
-- VACUUM leaves a dead entry in the pending indexes, and a scan from the start walks them all.
WITH head AS MATERIALIZED (
    SELECT id, model, dimensions
    FROM embedq_item
    WHERE state = 'pending' AND model = ANY ($1::text[]) AND id >= $6
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), picked AS MATERIALIZED (
    SELECT i.id
    FROM embedq_item i
    JOIN head h ON i.model = h.model AND i.dimensions = h.dimensions
    WHERE i.state = 'pending' AND i.id >= h.id
    ORDER BY i.id
    LIMIT $2
    FOR UPDATE OF i SKIP LOCKED
)
UPDATE embedq_item i
SET state = 'processing',
    lease_token = $3,
    lease_expires = now() + make_interval(secs => $4),
    attempts = i.attempts + 1,
    worker = $5,
    claimed_at = now()
FROM picked
WHERE i.id = picked.id
RETURNING i.id, i.task_id, i.input, i.model, i.dimensions, i.attempts;

-- extend_lease --
-- A heartbeat: push back the expiry of every input still held under this lease.
UPDATE embedq_item
SET lease_expires = now() + make_interval(secs => $2)
WHERE lease_token = $1 AND state = 'processing'
RETURNING id;

-- complete_items --
-- Store results, fenced by the lease inside the UPDATE: inputs whose lease was lost are
-- left alone. Settles the tasks (one NOTIFY per batch) and returns the ids it completed.
WITH results AS (
    SELECT * FROM unnest($2::bigint[], $3::bytea[], $4::integer[]) AS r(id, vector, tokens)
), done AS (
    UPDATE embedq_item i
    SET state = 'completed',
        vector = r.vector,
        tokens = r.tokens,
        model_revision = $5,
        error = NULL,
        lease_token = NULL,
        lease_expires = NULL,
        completed_at = now()
    FROM results r
    WHERE i.id = r.id AND i.state = 'processing' AND i.lease_token = $1
    RETURNING i.id, i.task_id, i.idx, i.model, i.dimensions, i.input, i.vector, i.tokens,
              i.created_at, i.claimed_at
), touched AS (
    -- The tasks of this batch, for the caller to answer those it finishes (see below) from
    -- the vectors it holds, when it holds them all, without reading them back.
    SELECT t.id, t.owner, t.model, t.dimensions, t.n_inputs, t.created_at
    FROM (SELECT DISTINCT task_id FROM done) d
    JOIN embedq_task t ON t.id = d.task_id
), cached AS (
    INSERT INTO embedq_cache (scope, model, dimensions, text_hash, vector, tokens,
                              model_revision)
    SELECT DISTINCT ON (scope, model, dimensions, text_hash) *
    FROM (
        SELECT CASE WHEN $6 = 'global' THEN '' ELSE t.owner END AS scope,
               d.model, d.dimensions, sha256(convert_to(d.input, 'UTF8')) AS text_hash,
               d.vector, d.tokens, $5::text
        FROM done d JOIN touched t ON t.id = d.task_id
        WHERE $6 <> 'off'
    ) c
    ON CONFLICT (scope, model, dimensions, text_hash) DO UPDATE
    SET vector = excluded.vector, tokens = excluded.tokens,
        model_revision = excluded.model_revision, created_at = now()
    WHERE embedq_cache.model_revision IS DISTINCT FROM excluded.model_revision
)
SELECT coalesce(array_agg(id), '{}') AS ids,
       coalesce(array_agg(task_id), '{}') AS item_tasks,
       coalesce(array_agg(idx), '{}') AS idxs,
       (SELECT array_agg(w.id ORDER BY w.id) FROM touched w) AS touched_ids,
       (SELECT array_agg(w.owner ORDER BY w.id) FROM touched w) AS touched_owners,
       (SELECT array_agg(w.model ORDER BY w.id) FROM touched w) AS touched_models,
       (SELECT array_agg(w.dimensions ORDER BY w.id) FROM touched w) AS touched_dimensions,
       (SELECT array_agg(w.n_inputs ORDER BY w.id) FROM touched w) AS touched_n_inputs,
       (SELECT array_agg(w.created_at ORDER BY w.id) FROM touched w) AS touched_created,
       now() AS finished_at,
       coalesce(array_agg(extract(epoch FROM claimed_at - created_at)::float8), '{}')
           AS queue_waits,
       coalesce(array_agg(extract(epoch FROM clock_timestamp() - claimed_at)::float8), '{}')
           AS computes,
       coalesce(array_agg(extract(epoch FROM clock_timestamp() - created_at)::float8), '{}')
           AS totals,
       min(model) AS model,
       -- The tasks this batch finished (counted under the tasks' row locks).
       embedq_settle_finished(array_agg(task_id), array_agg(false), array_agg(NULL::text),
                              array_agg(NULL::text)) AS finished_ids
FROM done;

-- fail_items --
-- A worker reports inputs it could not compute. Retryable ones go back to pending while
-- attempts remain ($5 is the attempt limit); the rest end failed with the reason.
WITH reports AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::boolean[], $6::text[])
        AS f(id, error, retry, code)
), changed AS (
    UPDATE embedq_item i
    SET state = CASE WHEN f.retry AND i.attempts < $5 THEN 'pending' ELSE 'failed' END,
        error = CASE WHEN f.retry AND i.attempts >= $5
                     THEN format('gave up after %s attempts: %s', i.attempts, f.error)
                     ELSE f.error END,
        error_code = CASE WHEN f.retry AND i.attempts >= $5 THEN 'attempts_exhausted'
                          ELSE f.code END,
        lease_token = NULL,
        lease_expires = NULL,
        completed_at = CASE WHEN f.retry AND i.attempts < $5 THEN NULL ELSE now() END
    FROM reports f
    WHERE i.id = f.id AND i.state = 'processing' AND i.lease_token = $1
    RETURNING i.id, i.task_id, i.state, i.error, i.error_code, i.model
), settled AS (
    SELECT embedq_settle(array_agg(task_id), array_agg(true), array_agg(error),
                         array_agg(error_code)) AS woken
    FROM changed WHERE state = 'failed'
), requeued AS (
    SELECT pg_notify('embedq_work', model)
    FROM (SELECT DISTINCT model FROM changed WHERE state = 'pending') m
)
SELECT coalesce(array_agg(id), '{}') AS ids,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'pending') AS requeued,
       min(model) AS model,
       (SELECT woken FROM settled) AS woken,
       coalesce((SELECT array_agg(DISTINCT task_id) FROM changed WHERE state = 'failed'),
                '{}') AS failed_tasks,
       (SELECT count(*) FROM requeued) AS requeued_models
FROM changed;

-- release_items --
-- Hand back inputs a stopping worker claimed but never started: pending again, and the
-- attempt does not count against them.
WITH released AS (
    UPDATE embedq_item
    SET state = 'pending', lease_token = NULL, lease_expires = NULL, worker = NULL,
        attempts = greatest(attempts - 1, 0)
    WHERE id = ANY ($2::bigint[]) AND state = 'processing' AND lease_token = $1
    RETURNING id, model
), woken AS (
    SELECT pg_notify('embedq_work', model) FROM (SELECT DISTINCT model FROM released) m
)
SELECT coalesce(array_agg(id), '{}') AS ids, (SELECT count(*) FROM woken) AS models
FROM released;

-- expire_leases --
-- Inputs whose lease ran out (the worker died or lost touch): back to pending, or failed
-- once they have used their attempts. Bounded ($1 rows) and fenced on the expiry itself, so
-- a completion that commits in between wins.
WITH expired AS MATERIALIZED (
    SELECT id FROM embedq_item
    WHERE state = 'processing' AND lease_expires < now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE embedq_item i
    SET state = CASE WHEN i.attempts >= $2 THEN 'failed' ELSE 'pending' END,
        error = CASE WHEN i.attempts >= $2
                     THEN format('gave up after %s attempts: the lease of worker %s expired '
                                 'before it posted a result (it died, hung or lost touch)',
                                 i.attempts, coalesce(i.worker, '?'))
                     ELSE i.error END,
        error_code = CASE WHEN i.attempts >= $2 THEN 'attempts_exhausted' END,
        completed_at = CASE WHEN i.attempts >= $2 THEN now() END,
        lease_token = NULL,
        lease_expires = NULL
    FROM expired e
    WHERE i.id = e.id AND i.state = 'processing' AND i.lease_expires < now()
    RETURNING i.id, i.task_id, i.state, i.error, i.error_code, i.model
), settled AS (
    SELECT embedq_settle(array_agg(task_id), array_agg(true), array_agg(error),
                         array_agg(error_code)) AS woken
    FROM changed WHERE state = 'failed'
), requeued AS (
    SELECT pg_notify('embedq_work', model)
    FROM (SELECT DISTINCT model FROM changed WHERE state = 'pending') m
)
SELECT count(*) FILTER (WHERE state = 'pending') AS requeued,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       (SELECT woken FROM settled) AS woken,
       coalesce((SELECT array_agg(DISTINCT task_id) FROM changed WHERE state = 'failed'),
                '{}') AS failed_tasks,
       (SELECT count(*) FROM requeued) AS models
FROM changed;

-- prune_finished --
-- Retention: delete up to $2 tasks (and their inputs and vectors) finished more than $1
-- seconds ago. Small batches keep locks short.
-- The ids go in as an array (a primary-key lookup each): joined, the delete could be planned
-- as a scan of the whole table while its statistics lag behind its growth.
DELETE FROM embedq_task
WHERE id = ANY (ARRAY(
    SELECT id FROM embedq_task
    WHERE finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- set_model_revision --
-- Record the revision a model is now computed with; cached vectors of other revisions stop
-- being served.
INSERT INTO embedq_model (model, revision, updated_at) VALUES ($1, $2, now())
ON CONFLICT (model) DO UPDATE SET revision = excluded.revision, updated_at = now()
WHERE embedq_model.revision IS DISTINCT FROM excluded.revision;

-- prune_cache --
-- Cache retention: delete up to $2 stored results older than $1 seconds, oldest first.
-- The ORDER BY keeps the plan on the created_at index: with the table's statistics behind
-- its growth (a busy cache outgrows autovacuum's analyze), a bare LIMIT was planned as a
-- sequential scan expected to stop early, and read (and dirtied) the whole table every pass.
DELETE FROM embedq_cache
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM embedq_cache
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
));

-- touch_worker --
-- A worker says who it is; the server counts it alive while it keeps saying so.
INSERT INTO embedq_worker (name, version, models, backend, host, last_seen)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (name) DO UPDATE
SET version = excluded.version, models = excluded.models, backend = excluded.backend,
    host = excluded.host, last_seen = now();

-- live_models --
-- Models served by workers seen within the last $1 seconds.
SELECT DISTINCT unnest(models) AS model
FROM embedq_worker
WHERE last_seen > now() - make_interval(secs => $1)
ORDER BY 1;

-- try_maintenance_lock --
-- Only one server process runs maintenance at a time.
SELECT pg_try_advisory_xact_lock(hashtext('embedq_maintenance'));

-- ops_queue --
-- Inputs per model and state, and the age of the oldest pending one (view embedq_queue).
SELECT model, state, items, tasks, oldest_pending_seconds FROM embedq_queue;

-- ops_workers --
-- Registered workers, liveness and inputs in hand (view embedq_workers).
SELECT name, version, models, backend, host, last_seen, seconds_since_seen, alive,
       items_in_hand
FROM embedq_workers;

-- ops_recent_failures --
-- The newest $1 failed inputs (view embedq_failures).
SELECT task_id, item_id, model, error, error_code, attempts, worker, completed_at
FROM embedq_failures
LIMIT $1;

-- ops_throughput --
-- Completed inputs per model and minute over the last hour, zero-filled (view).
SELECT model, minute, completed FROM embedq_throughput;

-- ops_requeue_failed --
-- Failed inputs back to pending, task counters fixed (migration 0004). $1 model or NULL,
-- $2 minimum age of the failure in seconds, $3 task id or NULL.
SELECT items, tasks
FROM embedq_requeue_failed($1::text, make_interval(secs => $2::float8), $3::uuid);

-- ops_purge_preview --
-- What `purge --model $1` would take: pending inputs and their tasks.
SELECT count(*) AS items, count(DISTINCT task_id) AS tasks
FROM embedq_item
WHERE state = 'pending' AND model = $1;

-- ops_purge_pending --
-- Drop model $1's pending inputs (migration 0004): unstarted tasks deleted, the rest failed.
SELECT deleted_tasks, deleted_items, failed_items FROM embedq_purge_pending($1::text);

-- metrics_snapshot --
-- Everything /metrics reads from the database, in one round trip at scrape time. Only the
-- queue proper (pending and processing inputs, through their partial indexes): counting
-- the completed and failed ones meant reading every stored vector (gigabytes at the
-- retention of a busy queue) on every scrape. Those are counted by embedq_items_total, and
-- the embedq_queue view shows them in psql.
SELECT (SELECT coalesce(json_agg(q), '[]')
        FROM (SELECT p.model, 'pending' AS state, p.items,
                     extract(epoch FROM now() - i.created_at)::float8 AS oldest_pending_seconds
              FROM (SELECT model, count(*) AS items, min(id) AS oldest_id
                    FROM embedq_item WHERE state = 'pending' GROUP BY model) p
              JOIN embedq_item i ON i.id = p.oldest_id
              UNION ALL
              SELECT model, 'processing', count(*), NULL
              FROM embedq_item WHERE state = 'processing' GROUP BY model) q)
           AS queue,
       (SELECT count(*) FROM embedq_worker WHERE last_seen > now() - interval '60 seconds')
           AS live_workers,
       (SELECT coalesce(json_object_agg(model, n), '{}')
        FROM (SELECT m AS model, count(*) AS n
              FROM embedq_worker, unnest(models) AS m
              WHERE last_seen > now() - interval '60 seconds'
              GROUP BY m) w) AS model_workers;
