-- depends: 0004_ops_functions
-- Stored results for repeated texts: a text embedded again with the same model, dimensions
-- and model revision is answered from here, without a worker. `scope` is the owner (a
-- client only hits its own results, so timing reveals nothing about other clients' texts)
-- or '' when the operator shares the cache across clients.

CREATE TABLE IF NOT EXISTS embedq_cache (
    scope          text NOT NULL,
    model          text NOT NULL,
    dimensions     integer NOT NULL,
    text_hash      bytea NOT NULL,            -- sha256 of the UTF-8 text
    vector         bytea NOT NULL,
    tokens         integer NOT NULL DEFAULT 0,
    model_revision text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, model, dimensions, text_hash)
);

CREATE INDEX IF NOT EXISTS embedq_cache_created_idx ON embedq_cache (created_at);

-- The latest revision (digest) each model was computed with: cached vectors of another
-- revision are never served, so vectors of different model versions are not mixed.
CREATE TABLE IF NOT EXISTS embedq_model (
    model      text PRIMARY KEY,
    revision   text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
