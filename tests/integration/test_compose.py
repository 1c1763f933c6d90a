"""docker-compose.yml resolves (`docker-compose config`) to the stack the docs promise,
and the Dockerfile builds a non-root server image with a health check.

No Docker engine is needed: `config` only parses, validates and interpolates. Needs
Debian's `docker-compose` package (or the `docker compose` plugin) and PyYAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from embedq_server.settings import SAMPLE_TOKENS

ROOT = Path(__file__).resolve().parents[2]
TRIAL_CLIENT_TOKEN = "insecure-local-trial-client-token"
TRIAL_WORKER_TOKEN = "insecure-local-trial-worker-token"
PULL_COMMAND = "docker compose exec ollama ollama pull nomic-embed-text"
SHUTDOWN_GRACE = 30  # seconds the server and the worker drain after SIGTERM


def compose_command() -> list[str]:
    if path := shutil.which("docker-compose"):
        return [path]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    pytest.fail(
        "neither docker-compose nor the docker compose plugin found: install Debian's "
        "docker-compose package (apt-get install -y docker-compose); these tests do not skip"
    )


def load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is needed to read `docker-compose config`: pip install pyyaml")
    return yaml.safe_load(text)


def resolve(tmp_path: Path, env_file: str = "") -> dict[str, Any]:
    """`config` of a copy of the project's compose files, isolated from any real .env."""
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".env").write_text(env_file)
    compose = [*compose_command(), "--project-directory", str(tmp_path)]
    compose += ["-f", str(tmp_path / "docker-compose.yml")]
    # A bare environment: CI's own AUTH_TOKEN or the like must not leak into the result.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    quiet = subprocess.run([*compose, "config", "-q"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "", quiet.stderr  # warnings too: unset variables, etc.
    result = subprocess.run(
        [*compose, "config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = load_yaml(result.stdout)
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return resolve(tmp_path_factory.mktemp("compose"))


# docker-compose 1.x prints short forms, the docker compose plugin long ones.
def published(port: str | dict[str, Any]) -> str:
    if isinstance(port, dict):
        return f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
    return str(port).removesuffix("/tcp")


def mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    if isinstance(volume, dict):
        return volume["source"], volume["target"]
    source, target = str(volume).split(":")[:2]
    return source, target


def seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(value))
    assert match and value, f"unexpected duration {value!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_four_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "server", "worker", "ollama"}


def test_postgres(config: dict[str, Any]) -> None:
    postgres = config["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    sources = [
        src for src, dst in map(mount, postgres["volumes"]) if dst == "/var/lib/postgresql/data"
    ]
    assert sources and sources[0] in config["volumes"], "the data on a named volume"
    assert "ports" not in postgres, "the database stays on the compose network"


def test_server(config: dict[str, Any]) -> None:
    server = config["services"]["server"]
    env = server["environment"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["SERVER_HOST"] == "0.0.0.0"
    assert server["build"]["context"]
    # Works on the first `up` with no .env: tokens the server accepts off loopback...
    assert env["AUTH_TOKEN"] == TRIAL_CLIENT_TOKEN
    assert env["WORKER_TOKEN"] == TRIAL_WORKER_TOKEN
    assert not {TRIAL_CLIENT_TOKEN, TRIAL_WORKER_TOKEN} & SAMPLE_TOKENS
    # ...and public ones, so the API is published on the host's loopback only.
    assert [published(p) for p in server["ports"]] == ["127.0.0.1:8000:8000"]
    assert seconds(server["stop_grace_period"]) > SHUTDOWN_GRACE


def test_worker(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    server = config["services"]["server"]
    env = worker["environment"]
    assert worker["image"] == server["image"], "one image for both programs"
    assert worker["entrypoint"] == ["embedq-worker"]
    assert env["SERVER_URL"] == "http://server:8000"
    assert env["OLLAMA_URL"] == "http://ollama:11434"
    assert env["WORKER_TOKEN"] == server["environment"]["WORKER_TOKEN"]
    assert worker["depends_on"]["server"]["condition"] == "service_healthy"
    assert "ollama" in worker["depends_on"]
    # The image's health check asks the server's port, which the worker does not have.
    check = worker["healthcheck"]
    assert check.get("disable") is True or check.get("test") == ["NONE"]
    assert seconds(worker["stop_grace_period"]) > SHUTDOWN_GRACE


def test_ollama_reserves_the_gpus(config: dict[str, Any]) -> None:
    ollama = config["services"]["ollama"]
    assert ollama["image"].startswith("ollama/ollama")
    [device] = ollama["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] in ("all", -1)  # the plugin spells "all" as -1
    assert device["capabilities"] == ["gpu"]
    sources = [src for src, dst in map(mount, ollama["volumes"]) if dst == "/root/.ollama"]
    assert sources and sources[0] in config["volumes"], "pulled models survive a rebuild"


def test_env_file_overrides_the_trial_defaults(tmp_path: Path) -> None:
    config = resolve(
        tmp_path,
        "AUTH_TOKEN=client-a,client-b\nWORKER_TOKEN=w-secret\nPOSTGRES_PASSWORD=pg-secret\n"
        "EMBEDQ_PUBLISH=0.0.0.0:9000\n",
    )
    server = config["services"]["server"]["environment"]
    assert server["AUTH_TOKEN"] == "client-a,client-b"
    assert server["WORKER_TOKEN"] == "w-secret"
    assert config["services"]["worker"]["environment"]["WORKER_TOKEN"] == "w-secret"
    assert server["DATABASE_URL"] == "postgresql://embedq:pg-secret@postgres:5432/embedq"
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-secret"
    assert published(config["services"]["server"]["ports"][0]) == "0.0.0.0:9000:8000"


def test_env_example_lists_every_variable_compose_reads() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", compose))
    documented = set(re.findall(r"^#([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used == documented


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    args = " ".join(rest for word, rest in instructions if word == "ARG")
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    assert re.search(r"\bEXTRAS=", args)
    assert "${EXTRAS:+[$EXTRAS]}" in " ".join(rest for word, rest in instructions)
    # Only the final stage matters for what runs.
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[last_from:]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", "8000") in final
    health = " ".join(rest for word, rest in final if word == "HEALTHCHECK")
    assert "urllib" in health and "/health" in health
    assert ("ENTRYPOINT", '["embedq-server"]') in final


def test_dockerignore_keeps_secrets_out_of_the_context() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    for secret in (".env", ".git", ".venv", "data"):
        assert secret in patterns


def test_the_documented_pull_command() -> None:
    assert PULL_COMMAND in (ROOT / "docker-compose.yml").read_text()
    assert PULL_COMMAND in (ROOT / "docs" / "install.md").read_text()
