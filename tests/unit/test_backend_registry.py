"""EMBEDDING_MODEL parsing and the backends built from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from embedq_worker.backends import build_backends, parse_models
from embedq_worker.backends.base import ModelSpec
from embedq_worker.backends.ollama import OllamaBackend
from embedq_worker.backends.openai import OpenAIBackend
from tests.doubles.common import REPO_ROOT


def test_prefixes_name_the_backend_and_the_rest_go_to_the_default() -> None:
    specs = parse_models(
        "nomic-embed-text, local:all-minilm,openai:text-embedding-3-small,,", "ollama"
    )
    assert specs == [
        ModelSpec("nomic-embed-text", "ollama"),
        ModelSpec("all-minilm", "local"),
        ModelSpec("text-embedding-3-small", "openai"),
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nomic-embed-text:latest", ModelSpec("nomic-embed-text:latest", "openai")),
        ("ollama:nomic-embed-text:v1.5", ModelSpec("nomic-embed-text:v1.5", "ollama")),
        ("hf.co/org/model:Q4_K_M", ModelSpec("hf.co/org/model:Q4_K_M", "openai")),
        ("localhost:5000/model", ModelSpec("localhost:5000/model", "openai")),
        ("local:BAAI/bge-small-en-v1.5", ModelSpec("BAAI/bge-small-en-v1.5", "local")),
    ],
)
def test_a_colon_in_a_model_name_is_not_a_backend(spec: str, expected: ModelSpec) -> None:
    assert parse_models(spec, "openai") == [expected]


@pytest.mark.parametrize(
    ("spec", "default", "message"),
    [
        ("", "ollama", "no model"),
        (" , ", "ollama", "no model"),
        ("local:", "ollama", "no model name"),
        ("a,ollama:a", "ollama", "listed twice"),
        ("a,local:a", "ollama", "listed twice"),
        ("a", "gpu", "unknown backend"),
    ],
)
def test_bad_specs_are_refused_clearly(spec: str, default: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_models(spec, default)


def _build(spec: str, **overrides: object) -> dict[str, object]:
    options: dict[str, object] = {
        "ollama_urls": ["http://a:11434", "http://b:11434"],
        "openai_base_url": "http://vllm:8000/v1",
        "openai_api_key": "sk-test",
        "timeout": 5.0,
    } | overrides
    return dict(build_backends(parse_models(spec, "ollama"), **options))  # type: ignore[arg-type]


def test_one_backend_per_kind_is_shared_by_its_models() -> None:
    backends = _build("nomic-embed-text,all-minilm,openai:e3,openai:e4")
    assert backends["nomic-embed-text"] is backends["all-minilm"]
    assert backends["e3"] is backends["e4"]
    assert isinstance(backends["nomic-embed-text"], OllamaBackend)
    assert backends["nomic-embed-text"].concurrency == 2
    assert isinstance(backends["e3"], OpenAIBackend)
    assert backends["e3"].base_url == "http://vllm:8000/v1"


def test_a_backend_without_its_address_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="base URL"):
        _build("openai:e3", openai_base_url=None)
    with pytest.raises(ValueError, match="Ollama URL"):
        _build("nomic-embed-text", ollama_urls=[])


def test_addresses_of_unused_backends_are_not_needed() -> None:
    backends = _build("openai:e3", ollama_urls=[])
    assert list(backends) == ["e3"]


def test_building_a_local_backend_does_not_import_torch() -> None:
    """The plain worker must run without the `local` extra: torch loads only at start()."""
    code = (
        "import sys\n"
        "from embedq_worker.backends import build_backends, parse_models\n"
        "b = build_backends(parse_models('local:all-minilm', 'ollama'), ollama_urls=[],"
        " openai_base_url=None, openai_api_key=None, timeout=1.0)\n"
        "assert b['all-minilm'].name == 'local'\n"
        "heavy = {'torch', 'sentence_transformers', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
