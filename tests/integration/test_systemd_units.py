"""The systemd units parse cleanly (`systemd-analyze verify`) and keep their key settings.

verify checks that ExecStart exists, so each unit is verified as a copy whose
/opt/embedq/venv points at stub executables in a temporary directory; everything else
is the file as shipped. verify exits 0 on unknown keys and bad values (it only warns),
so any output at all counts as a failure. Needs Debian's `systemd` package; no running
systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from embedq_server.settings import MAX_IN_FLIGHT

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "systemd"
VENV = "/opt/embedq/venv"
# unit file -> the name it is verified under (a template needs an instance)
UNITS = {
    "embedq-server.service": "embedq-server.service",
    "embedq-worker@.service": "embedq-worker@gpu0.service",
}
SANDBOX = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "LockPersonality": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "UMask": "0077",
}
# `systemd-analyze security` exposure, times ten (0 best, 100 worst). The units score
# about 1.5 and 1.7; dropping the sandbox block puts them above 9.
MAX_EXPOSURE = 25

Unit = dict[str, dict[str, list[str]]]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze not found: install Debian's systemd package "
            "(apt-get install -y systemd); these tests do not skip"
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_COLOR": "0", "LANG": "C"},
    )


def parse(text: str) -> Unit:
    """Sections -> key -> every value in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(name: str) -> Unit:
    return parse((SYSTEMD_DIR / name).read_text())


def last(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def seconds(span: str) -> float:
    """A systemd time span ("45", "1min 30s") in seconds, as systemd reads it."""
    result = run("timespan", span)
    match = re.search(r"(?:μs|us): (\d+)", result.stdout)
    assert result.returncode == 0 and match, result.stderr
    return int(match.group(1)) / 1e6


@pytest.fixture
def staged(tmp_path: Path) -> Callable[[str, str], Path]:
    """Copy a unit under its verify name, with ExecStart= pointing at real stubs."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("embedq-server", "embedq-worker"):
        stub = bin_dir / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)

    def stage(text: str, name: str) -> Path:
        assert VENV + "/bin/" in text, "ExecStart no longer uses /opt/embedq/venv"
        path = tmp_path / name
        path.write_text(text.replace(VENV, str(tmp_path / "venv")))
        return path

    return stage


def verify(path: Path) -> str:
    """verify's complaints ("" when clean)."""
    result = run("verify", "--man=no", "--generators=no", str(path))
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not output:
        output = f"exit code {result.returncode}"
    return output


@pytest.mark.parametrize("file", UNITS)
def test_unit_verifies_cleanly(file: str, staged: Callable[[str, str], Path]) -> None:
    path = staged((SYSTEMD_DIR / file).read_text(), UNITS[file])
    assert verify(path) == ""


@pytest.mark.parametrize(
    ("mutation", "complaint"),
    [
        (lambda t: t.replace("[Service]\n", "[Service]\nWatchdogSecs=30\n"), "Unknown key"),
        (lambda t: t.replace("Restart=on-failure", "Restart on-failure"), "Missing '='"),
        (lambda t: t.replace("Type=notify", "Type=notfy"), "service type"),
        (lambda t: t.replace("@system-service", "@system-servce"), "system call group"),
    ],
    ids=["unknown-key", "no-equals", "bad-type", "bad-syscall-group"],
)
def test_verify_catches_broken_units(
    mutation: Callable[[str], str], complaint: str, staged: Callable[[str, str], Path]
) -> None:
    # Proves the harness above is not vacuous on this systemd version.
    text = (SYSTEMD_DIR / "embedq-server.service").read_text()
    broken = mutation(text)
    assert broken != text
    assert complaint in verify(staged(broken, "embedq-server.service"))


@pytest.mark.parametrize("file", UNITS)
def test_sandbox_exposure_stays_low(file: str, staged: Callable[[str, str], Path]) -> None:
    path = staged((SYSTEMD_DIR / file).read_text(), UNITS[file])
    result = run(
        "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", "--no-pager", str(path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.parametrize("file", UNITS)
def test_lifecycle_settings(file: str) -> None:
    unit = load(file)
    service = unit["Service"]
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert last(unit, "Service", "Restart") == "on-failure"
    assert seconds(last(unit, "Service", "RestartSec")) == 5
    # The programs drain for up to SHUTDOWN_GRACE=30 s before SIGKILL may come.
    assert seconds(last(unit, "Service", "TimeoutStopSec")) > 30
    assert last(unit, "Service", "User") == "embedq"
    assert last(unit, "Service", "Group") == "embedq"
    assert service["ExecStart"][-1].startswith(VENV + "/bin/embedq-")
    assert "network-online.target" in " ".join(unit["Unit"]["Wants"])
    assert "network-online.target" in " ".join(unit["Unit"]["After"])
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("file", UNITS)
def test_sandbox_settings(file: str) -> None:
    unit = load(file)
    for key, value in SANDBOX.items():
        assert last(unit, "Service", key) == value, key
    assert unit["Service"]["ReadWritePaths"], "the state/cache dir must stay writable"
    assert "MemoryDenyWriteExecute" not in unit["Service"], "Python, cffi and JITs need W+X"
    assert "MemoryDenyWriteExecute" in (SYSTEMD_DIR / file).read_text(), "say why it is off"


def test_server_specifics() -> None:
    unit = load("embedq-server.service")
    assert seconds(last(unit, "Service", "WatchdogSec")) == 30
    assert last(unit, "Service", "ExecStart") == VENV + "/bin/embedq-server serve"
    assert last(unit, "Service", "EnvironmentFile") == "/etc/embedq/server.env"
    assert last(unit, "Service", "StateDirectory") == "embedq"
    assert last(unit, "Service", "WorkingDirectory") == "/var/lib/embedq"
    assert "EMBEDQ_DATA_DIR=/var/lib/embedq/data" in unit["Service"]["Environment"]
    assert "/var/lib/embedq" in unit["Service"]["ReadWritePaths"]
    assert last(unit, "Service", "PrivateDevices") == "yes"
    # Only the server gets SIGTERM; it stops its embedded PostgreSQL itself.
    assert last(unit, "Service", "KillMode") == "mixed"
    assert "postgresql.service" in " ".join(unit["Unit"]["After"])
    # A socket per request in flight: the default MAX_IN_FLIGHT must fit, with room for
    # idle keep-alive connections and the database's, or accept() fails before the 503.
    assert int(last(unit, "Service", "LimitNOFILE")) >= 2 * MAX_IN_FLIGHT


def test_worker_template_specifics() -> None:
    unit = load("embedq-worker@.service")
    assert last(unit, "Service", "ExecStart") == VENV + "/bin/embedq-worker"
    assert last(unit, "Service", "EnvironmentFile") == "/etc/embedq/worker-%i.env"
    assert "WORKER_NAME=%H-%i" in unit["Service"]["Environment"]
    # The local backend needs the GPU's device nodes: a closed policy plus GPU groups.
    assert last(unit, "Service", "PrivateDevices") == "no"
    assert last(unit, "Service", "DevicePolicy") == "closed"
    assert any(rule.startswith("char-nvidia") for rule in unit["Service"]["DeviceAllow"])
    # The worker may run far from the server: no hard dependency on it.
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert "embedq-server.service" not in " ".join(unit["Unit"].get(key, []))


@pytest.mark.parametrize(
    ("example", "names"),
    [
        (
            "server.env.example",
            "DATABASE_URL EMBEDQ_DATA_DIR SERVER_HOST SERVER_PORT AUTH_TOKEN WORKER_TOKEN "
            "EMBEDDING_MODEL RESULT_TTL LEASE_SECONDS SHUTDOWN_GRACE LOG_FORMAT",
        ),
        (
            "worker.env.example",
            "SERVER_URL WORKER_TOKEN OLLAMA_URL EMBEDDING_MODEL BACKEND OPENAI_BASE_URL "
            "OPENAI_API_KEY POLL_INTERVAL WORKER_NAME SHUTDOWN_GRACE",
        ),
    ],
)
def test_env_examples_document_every_variable(example: str, names: str) -> None:
    text = (SYSTEMD_DIR / example).read_text()
    for name in names.split():
        assert re.search(rf"^#{name}=", text, re.MULTILINE), f"{example}: no #{name}= line"
    # Examples are all comments: a copied file changes nothing until edited.
    assert all(not line or line.startswith("#") for line in text.splitlines())


def receive(manager: socket.socket, process: subprocess.Popen[bytes], within: float) -> str:
    """The next datagram; fail at once if the process died instead of waiting it out."""
    deadline = time.monotonic() + within
    manager.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            return manager.recv(4096).decode()
        except TimeoutError:
            assert process.poll() is None, f"exited with {process.returncode}"
    raise AssertionError(f"nothing from the server within {within} s")


def test_server_speaks_the_notify_protocol_the_unit_expects(tmp_path: Path) -> None:
    """Type=notify + WatchdogSec against the real server: READY=1 only once the port
    listens, WATCHDOG=1 pings while the database answers, STOPPING=1 on SIGTERM."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    state_dir = Path(tempfile.mkdtemp(prefix="eqsd"))  # short: Unix socket paths <108 bytes
    notify_path = str(state_dir / "notify")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "SERVER_HOST", "AUTH_TOKEN", "WORKER_TOKEN", "WATCHDOG_PID"}
    }
    env |= {
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": "1000000",  # pings every 0.5 s
        "EMBEDQ_DATA_DIR": str(state_dir / "data"),
        "SERVER_PORT": str(port),
    }
    log_path = state_dir / "server.log"  # a file, not a pipe: a full pipe would block it
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager,
        log_path.open("w") as log,
    ):
        manager.bind(notify_path)
        server = subprocess.Popen(
            [sys.executable, "-m", "embedq_server.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # The first start runs initdb and the migrations.
            assert receive(manager, server, within=90) == "READY=1"
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

            pings = [receive(manager, server, within=5) for _ in range(2)]
            assert pings == ["WATCHDOG=1", "WATCHDOG=1"]

            server.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while (state := receive(manager, server, within=10)) != "STOPPING=1":
                assert state == "WATCHDOG=1" and time.monotonic() < deadline, state
            assert server.wait(timeout=60) == 0
        except (AssertionError, OSError, subprocess.TimeoutExpired) as exc:
            log.flush()
            server_log = log_path.read_text()[-4000:]
            raise AssertionError(f"{exc!r}\n--- server log ---\n{server_log}") from exc
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    output = log_path.read_text()
    shutil.rmtree(state_dir, ignore_errors=True)
    assert "sd_notify failed" not in output, output
