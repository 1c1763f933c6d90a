"""Which backend computes which model: parse EMBEDDING_MODEL and build the backends.

`EMBEDDING_MODEL=nomic-embed-text,local:all-minilm,openai:text-embedding-3-small` serves
three models; a model without a backend prefix goes to the default backend.
"""

from __future__ import annotations

from .base import Backend, ModelSpec
from .ollama import OllamaBackend
from .openai import OpenAIBackend

BACKENDS = ("ollama", "openai", "local", "zero")  # zero: benchmarks only (backends/zero.py)


def parse_models(spec: str, default_backend: str) -> list[ModelSpec]:
    """The models of a comma-separated spec. Only backend names (`ollama:`, `openai:`,
    `local:`, `zero:`) are prefixes, so Ollama names with a tag (`nomic-embed-text:latest`)
    stay whole."""
    if default_backend not in BACKENDS:
        raise ValueError(f"unknown backend {default_backend!r}: use one of {', '.join(BACKENDS)}")
    specs: list[ModelSpec] = []
    seen: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        prefix, sep, rest = item.partition(":")
        backend, name = (prefix, rest.strip()) if sep and prefix in BACKENDS else (None, item)
        backend = backend or default_backend
        if not name:
            raise ValueError(f"no model name after {prefix!r} in {item!r}")
        if name in seen:
            raise ValueError(
                f"model {name!r} is listed twice ({seen[name]} and {backend}): "
                "clients ask by name, so one backend must serve it"
            )
        seen[name] = backend
        specs.append(ModelSpec(name=name, backend=backend))
    if not specs:
        raise ValueError("no model to serve: set at least one model name")
    return specs


def build_backends(
    specs: list[ModelSpec],
    *,
    ollama_urls: list[str],
    openai_base_url: str | None,
    openai_api_key: str | None,
    timeout: float,
) -> dict[str, Backend]:
    """One backend instance per kind, shared by its models; model name -> backend."""
    kinds = {spec.backend for spec in specs}
    instances: dict[str, Backend] = {}
    if "ollama" in kinds:
        if not ollama_urls:
            raise ValueError("Ollama models need at least one Ollama URL")
        instances["ollama"] = OllamaBackend(ollama_urls, timeout=timeout)
    if "openai" in kinds:
        if not openai_base_url:
            raise ValueError("openai: models need the base URL of an OpenAI-compatible server")
        instances["openai"] = OpenAIBackend(openai_base_url, openai_api_key, timeout=timeout)
    if "local" in kinds:
        from .local import LocalBackend  # its heavy imports wait for start(), but keep it lazy

        instances["local"] = LocalBackend()
    if "zero" in kinds:
        from .zero import ZeroBackend

        instances["zero"] = ZeroBackend.from_env()
    unknown = kinds - instances.keys()
    if unknown:
        raise ValueError(f"unknown backend {sorted(unknown)}: use one of {', '.join(BACKENDS)}")
    return {spec.name: instances[spec.backend] for spec in specs}
