"""Repeated texts are answered from stored results, without a worker."""

from __future__ import annotations

import base64
import struct
from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers import CLIENT, OTHER_CLIENT, WORKER, claim


def vec(x: float) -> str:
    return base64.b64encode(struct.pack("<f", x)).decode()


async def submit(client: TestClient, inputs: list[str], headers: Any = CLIENT) -> Any:
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": inputs, "wait_seconds": 0},
        headers=headers,
    )
    return resp.status, await resp.json()


async def compute_all(client: TestClient, revision: str | None = None) -> list[str]:
    batch = await claim(client)
    await client.post(
        "/worker/complete",
        json={
            "worker": "w",
            "lease": batch["lease"],
            "model_revision": revision,
            "results": [
                {"id": i["id"], "embedding": vec(float(len(i["input"]))), "tokens": 3}
                for i in batch["items"]
            ],
        },
        headers=WORKER,
    )
    return [i["input"] for i in batch["items"]]


async def test_repeated_texts_skip_the_worker(app_client):
    client = await app_client()
    await submit(client, ["a", "bb"])
    assert await compute_all(client) == ["a", "bb"]
    # All inputs stored: answered at once, completed, no work queued.
    status, body = await submit(client, ["bb", "a"])
    assert status == 200
    assert [d["embedding"] for d in body["data"]] == [[2.0], [1.0]]
    assert body["usage"]["prompt_tokens"] == 6
    assert (await claim(client))["items"] == []
    # Partly stored: only the new text goes to a worker.
    status, body = await submit(client, ["a", "ccc"])
    assert status == 202
    assert await compute_all(client) == ["ccc"]
    task = await (await client.get(f"/tasks/{body['id']}", headers=CLIENT)).json()
    assert task["status"] == "completed"
    assert [d["embedding"] for d in task["result"]["data"]] == [[1.0], [3.0]]


async def test_cache_is_per_client_by_default(app_client):
    client = await app_client()
    await submit(client, ["secret"])
    await compute_all(client)
    status, _ = await submit(client, ["secret"], headers=OTHER_CLIENT)
    assert status == 202  # another client's stored text is not revealed by a fast answer
    assert await compute_all(client) == ["secret"]


async def test_global_cache_and_off(app_client):
    shared = await app_client(cache="global")
    await submit(shared, ["x"])
    await compute_all(shared)
    status, _ = await submit(shared, ["x", "x"], headers=OTHER_CLIENT)
    assert status == 200


async def test_cache_off_always_computes(app_client):
    client = await app_client(cache="off")
    await submit(client, ["x"])
    await compute_all(client)
    status, _ = await submit(client, ["x", "y"])
    assert status == 202
    assert await compute_all(client) == ["x", "y"]


async def test_a_new_model_revision_is_never_mixed_with_old_vectors(app_client):
    client = await app_client()
    await submit(client, ["x"])
    await compute_all(client, revision="sha256:old")
    await submit(client, ["y"])
    await compute_all(client, revision="sha256:new")
    status, _ = await submit(client, ["x", "z"])
    assert status == 202
    assert await compute_all(client, revision="sha256:new") == ["x", "z"]
