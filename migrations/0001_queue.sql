-- The queue: one task per API request, one item per input.
-- A task is what a client sees (its id is the task id); items are what workers claim,
-- so one request's inputs can spread over several workers.
-- Idempotent DDL: yoyo records a migration in a separate transaction, so a crash in
-- between re-runs it.

CREATE TABLE IF NOT EXISTS embedq_task (
    id           uuid PRIMARY KEY,
    owner        text NOT NULL,               -- hash of the client token that submitted it
    fingerprint  bytea NOT NULL,              -- hash of (owner, model, dimensions, inputs)
    model        text NOT NULL,
    dimensions   integer NOT NULL DEFAULT 0,  -- 0: the model's native size
    n_inputs     integer NOT NULL,
    remaining    integer NOT NULL,            -- items not yet completed or failed
    failed       integer NOT NULL DEFAULT 0,  -- items that ended failed
    error        text,                        -- the first failure's reason, in plain words
    error_code   text,                        -- its kind: input_rejected, model_not_found, ...
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE INDEX IF NOT EXISTS embedq_task_fingerprint_idx ON embedq_task (owner, fingerprint);
CREATE INDEX IF NOT EXISTS embedq_task_finished_idx ON embedq_task (finished_at)
    WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS embedq_item (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id        uuid NOT NULL REFERENCES embedq_task (id) ON DELETE CASCADE,
    idx            integer NOT NULL,          -- position of the input in its request
    model          text NOT NULL,
    dimensions     integer NOT NULL DEFAULT 0,
    input          text NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'processing', 'completed', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    lease_token    uuid,
    lease_expires  timestamptz,
    worker         text,
    vector         bytea,                     -- little-endian float32
    tokens         integer,
    model_revision text,
    error          text,
    error_code     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    claimed_at     timestamptz,
    completed_at   timestamptz,
    UNIQUE (task_id, idx)
);

-- The claim path reads only pending rows, oldest first, per model.
CREATE INDEX IF NOT EXISTS embedq_item_pending_idx ON embedq_item (model, dimensions, id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS embedq_item_pending_order_idx ON embedq_item (id)
    WHERE state = 'pending';
-- Heartbeats, completions and lease expiry find rows by lease.
CREATE INDEX IF NOT EXISTS embedq_item_lease_idx ON embedq_item (lease_token)
    WHERE state = 'processing';
CREATE INDEX IF NOT EXISTS embedq_item_expiry_idx ON embedq_item (lease_expires)
    WHERE state = 'processing';

-- Workers say who they are on every claim and heartbeat.
CREATE TABLE IF NOT EXISTS embedq_worker (
    name        text PRIMARY KEY,
    version     text,
    models      text[] NOT NULL DEFAULT '{}',
    backend     text,
    host        text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
