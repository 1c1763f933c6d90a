"""Worker settings: a frozen dataclass from the environment and the command line.

Every option has an environment variable twin, named in `--help`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from embedq_common.envconfig import EnvSettings

SERVER_URL = "http://localhost:8000"
OLLAMA_URL = "http://localhost:11434"
DEFAULT_MODELS = "nomic-embed-text"
POLL_INTERVAL = 1.0  # seconds: the first pause after an error; doubles up to BACKOFF_MAX
BACKOFF_MAX = 30.0  # seconds
BATCH_SIZE = 64  # inputs per claim and per backend call
CLAIM_WAIT = 20.0  # seconds a claim long-polls the server for work
PREFETCH = 1  # batches claimed ahead of those at the backend (covers a long claim round trip)
BACKEND_DEPTH = 2  # calls in flight per unit: the next one waits at the GPU, never idle
SHUTDOWN_GRACE = 30.0  # seconds to finish the batch in flight after SIGTERM
BACKEND_RETRY_LIMIT = 120.0  # seconds a batch retries an unavailable backend before handing back
REQUEST_TIMEOUT = 120.0  # seconds for one backend call


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings(EnvSettings):
    server_url: str = field(
        default=SERVER_URL, metadata={"env": "SERVER_URL", "help": "the embedq server"}
    )
    worker_token: str = field(
        default="", metadata={"env": "WORKER_TOKEN", "help": "this worker's token"}
    )
    models: str = field(
        default=DEFAULT_MODELS,
        metadata={
            "env": "EMBEDDING_MODEL",
            "help": "models served, comma-separated; a prefix picks the backend (local:all-minilm)",
        },
    )
    backend: str = field(
        default="ollama",
        metadata={"env": "BACKEND", "help": "default backend: ollama, openai or local"},
    )
    ollama_url: str = field(
        default=OLLAMA_URL,
        metadata={"env": "OLLAMA_URL", "help": "Ollama instance(s), comma-separated"},
    )
    openai_base_url: str = field(
        default="",
        metadata={"env": "OPENAI_BASE_URL", "help": "OpenAI-compatible server, e.g. .../v1"},
    )
    openai_api_key: str = field(
        default="", metadata={"env": "OPENAI_API_KEY", "help": "key for OPENAI_BASE_URL"}
    )
    name: str = field(
        default_factory=default_name,
        metadata={"env": "WORKER_NAME", "help": "this worker's name", "default_text": "host-pid"},
    )
    poll_interval: float = field(
        default=POLL_INTERVAL,
        metadata={"env": "POLL_INTERVAL", "help": "seconds between retries after errors"},
    )
    batch_size: int = field(
        default=BATCH_SIZE, metadata={"env": "BATCH_SIZE", "help": "inputs per batch"}
    )
    claim_wait: float = field(
        default=CLAIM_WAIT,
        metadata={"env": "CLAIM_WAIT", "help": "seconds a claim long-polls for work"},
    )
    prefetch: int = field(
        default=PREFETCH, metadata={"env": "PREFETCH", "help": "batches claimed ahead"}
    )
    backend_depth: int = field(
        default=BACKEND_DEPTH,
        metadata={
            "env": "BACKEND_DEPTH",
            "help": "backend calls in flight per GPU (one computes, the rest wait there)",
        },
    )
    shutdown_grace: float = field(
        default=SHUTDOWN_GRACE,
        metadata={"env": "SHUTDOWN_GRACE", "help": "seconds to finish work on SIGTERM"},
    )
    backend_retry_limit: float = field(
        default=BACKEND_RETRY_LIMIT,
        metadata={
            "env": "BACKEND_RETRY_LIMIT",
            "help": "seconds to retry an unavailable backend before handing a batch back",
        },
    )
    request_timeout: float = field(
        default=REQUEST_TIMEOUT,
        metadata={"env": "REQUEST_TIMEOUT", "help": "seconds for one backend call"},
    )
    metrics_port: int = field(
        default=0, metadata={"env": "METRICS_PORT", "help": "Prometheus port (0: off)"}
    )
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT", "help": "text or json"})
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL", "help": "log level"})
    channel: bool = field(
        default=True,
        metadata={
            "env": "WORKER_CHANNEL",
            "help": "call the server on one WebSocket; off: an HTTP request per call (for "
            "a proxy that does not pass WebSockets)",
        },
    )
    burst: bool = field(
        default=False,
        metadata={"env": "BURST", "help": "exit once the queue is empty (tests, batch jobs)"},
    )

    @property
    def ollama_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.ollama_url.split(",") if u.strip()]
