"""Server settings: one frozen dataclass, built from the environment and the command line.

Every option has an environment variable twin, shown in `--help`. Defaults are named
constants with their unit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from embedq_common.envconfig import EnvSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MODEL = "nomic-embed-text"
DEFAULT_WAIT = 10.0  # seconds a request waits for its result
MAX_WAIT = 30.0  # seconds; the most a request may ask to wait
DEFAULT_CLAIM_WAIT = 30.0  # seconds; the most a worker's claim may wait for work
LEASE_SECONDS = 60.0  # seconds a claim is valid without a heartbeat
MAX_ATTEMPTS = 3
RESULT_TTL = 3600.0  # seconds finished tasks are kept
MAINTENANCE_INTERVAL = 5.0  # seconds between lease-expiry and retention passes
MAINTENANCE_BATCH = 1000  # rows per maintenance statement
BACKSTOP_INTERVAL = 2.0  # seconds between re-checks of waiters (notifications can be lost)
LISTENER_PING = 5.0  # seconds between health checks of the LISTEN connection
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INPUTS = 2048
MAX_INPUT_CHARS = 100_000  # per input, roughly OpenAI's 8,192-token limit with margin
MAX_TOTAL_CHARS = 4_000_000  # per request
MAX_PENDING = 1_000_000  # pending inputs before new requests get 429
MAX_IN_FLIGHT = 4096  # client requests served at once before new ones get 503
MAX_BATCH = 256  # most inputs one claim may take
POOL_MIN = 2
POOL_MAX = 10
SHUTDOWN_GRACE = 30.0  # seconds in-flight requests get to finish after SIGTERM
WORKER_ALIVE = 60.0  # seconds since a worker's last call before it counts as gone
CACHE_MODES = ("owner", "global", "off")
CACHE_TTL = 86400.0  # seconds stored results for repeated texts are kept
SAMPLE_TOKENS = frozenset({"change-me", "sk-embedq-change-me", "worker-change-me"})


@dataclass(frozen=True, kw_only=True)
class Settings(EnvSettings):
    database_url: str | None = field(
        default=None,
        metadata={"env": "DATABASE_URL", "help": "PostgreSQL URL; unset: embedded PostgreSQL"},
    )
    data_dir: Path = field(
        default=Path("./data"),
        metadata={"env": "EMBEDQ_DATA_DIR", "help": "where the embedded PostgreSQL lives"},
    )
    host: str = field(default=DEFAULT_HOST, metadata={"env": "SERVER_HOST", "help": "bind address"})
    port: int = field(default=DEFAULT_PORT, metadata={"env": "SERVER_PORT", "help": "port"})
    auth_tokens: tuple[str, ...] = field(
        default=(), metadata={"env": "AUTH_TOKEN", "help": "client tokens, comma-separated"}
    )
    worker_tokens: tuple[str, ...] = field(
        default=(), metadata={"env": "WORKER_TOKEN", "help": "worker tokens, comma-separated"}
    )
    default_model: str = field(
        default=DEFAULT_MODEL,
        metadata={"env": "EMBEDDING_MODEL", "help": "model used when a request names none"},
    )
    default_wait: float = field(
        default=DEFAULT_WAIT,
        metadata={"env": "DEFAULT_WAIT", "help": "seconds a request waits for its result"},
    )
    max_wait: float = field(
        default=MAX_WAIT, metadata={"env": "MAX_WAIT", "help": "most seconds a request may wait"}
    )
    claim_wait: float = field(
        default=DEFAULT_CLAIM_WAIT,
        metadata={"env": "CLAIM_WAIT", "help": "most seconds a worker's claim waits for work"},
    )
    lease_seconds: float = field(
        default=LEASE_SECONDS,
        metadata={"env": "LEASE_SECONDS", "help": "seconds a claim lives without heartbeat"},
    )
    max_attempts: int = field(
        default=MAX_ATTEMPTS,
        metadata={"env": "MAX_ATTEMPTS", "help": "attempts before an input fails"},
    )
    result_ttl: float = field(
        default=RESULT_TTL,
        metadata={"env": "RESULT_TTL", "help": "seconds finished tasks are kept"},
    )
    maintenance_interval: float = field(
        default=MAINTENANCE_INTERVAL,
        metadata={"env": "MAINTENANCE_INTERVAL", "help": "seconds between maintenance passes"},
    )
    backstop_interval: float = field(
        default=BACKSTOP_INTERVAL,
        metadata={"env": "BACKSTOP_INTERVAL", "help": "seconds between waiter re-checks"},
    )
    max_body_bytes: int = field(
        default=MAX_BODY_BYTES,
        metadata={"env": "MAX_BODY_BYTES", "help": "largest request body (413 above)"},
    )
    max_inputs: int = field(
        default=MAX_INPUTS, metadata={"env": "MAX_INPUTS", "help": "inputs per request"}
    )
    max_input_chars: int = field(
        default=MAX_INPUT_CHARS,
        metadata={"env": "MAX_INPUT_CHARS", "help": "characters per input"},
    )
    max_total_chars: int = field(
        default=MAX_TOTAL_CHARS,
        metadata={"env": "MAX_TOTAL_CHARS", "help": "characters per request"},
    )
    max_pending: int = field(
        default=MAX_PENDING,
        metadata={"env": "MAX_PENDING", "help": "pending inputs before new requests get 429"},
    )
    max_in_flight: int = field(
        default=MAX_IN_FLIGHT,
        metadata={
            "env": "MAX_IN_FLIGHT",
            "help": "client requests served at once before new ones get 503",
        },
    )
    max_batch: int = field(
        default=MAX_BATCH, metadata={"env": "MAX_BATCH", "help": "most inputs one claim takes"}
    )
    pool_min: int = field(default=POOL_MIN, metadata={"env": "POOL_MIN", "help": "pool size"})
    pool_max: int = field(default=POOL_MAX, metadata={"env": "POOL_MAX", "help": "pool limit"})
    shutdown_grace: float = field(
        default=SHUTDOWN_GRACE,
        metadata={"env": "SHUTDOWN_GRACE", "help": "seconds to drain on SIGTERM"},
    )
    cache: str = field(
        default="owner",
        metadata={
            "env": "CACHE",
            "help": "answer repeated texts from stored results: owner (per client token), "
            "global (across clients) or off",
        },
    )
    cache_ttl: float = field(
        default=CACHE_TTL,
        metadata={"env": "CACHE_TTL", "help": "seconds stored results are kept"},
    )
    unserved_model: str = field(
        default="wait",
        metadata={
            "env": "UNSERVED_MODEL",
            "help": "a request for a model no live worker serves: wait (in the queue, and the "
            "task says so) or reject (404)",
        },
    )
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT", "help": "text or json"})
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL", "help": "log level"})

    def __post_init__(self) -> None:
        if self.unserved_model not in ("wait", "reject"):
            raise ValueError(f"UNSERVED_MODEL must be wait or reject, not {self.unserved_model!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"CACHE must be one of {', '.join(CACHE_MODES)}, not {self.cache!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"MAX_IN_FLIGHT must be at least 1, not {self.max_in_flight}")

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def loopback(self) -> bool:
        """Listening only on this machine (where running without tokens is allowed)."""
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def check_safe_to_listen(self) -> None:
        """Refuse to expose the queue without tokens, or with the README's sample tokens."""
        if self.loopback:
            return
        if not self.auth_tokens or not self.worker_tokens:
            raise ValueError(
                f"refusing to listen on {self.host} without AUTH_TOKEN and WORKER_TOKEN: "
                "anyone could submit work or read other people's texts"
            )
        sample = SAMPLE_TOKENS.intersection(self.auth_tokens + self.worker_tokens)
        if sample:
            raise ValueError(
                f"refusing to listen on {self.host} with the sample token(s) from the README; "
                "generate your own, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if set(self.auth_tokens) & set(self.worker_tokens):
            raise ValueError("a token may not be both a client token and a worker token")
