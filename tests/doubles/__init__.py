"""Test doubles of the compute servers a worker talks to, serving deterministic fake vectors.

- `vectors`: `expected_vector`/`expected_bytes(model, text, dimensions, dim)`, the vectors
  every double serves, to check results against; `fake_token_count` for usage.
- `ollama`: Ollama's /api/embed, /api/tags, /api/show, /api/ps, /api/version and the legacy
  /api/embeddings; `run_ollama_double(...)` in a test, `python -m tests.doubles.ollama`.
- `openai_compat`: /v1/embeddings and /v1/models with OpenAI's error envelope;
  `run_openai_double(...)` in a test, `python -m tests.doubles.openai_compat`.
- `common`: `POST /_control` (fail_next, status, delay_ms, down, reset_stats) and
  `GET /_stats` on every double, with the `control(url, ...)` and `stats(url)` helpers, and
  `spawn_double(module, *flags)` to run one as a child process.
"""
