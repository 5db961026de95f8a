"""Annotation backends: the flagstack engine (default), HF transformers, any OpenAI-compatible server."""
from __future__ import annotations

BACKENDS = ("engine", "hf", "hf-cached", "openai")


def make_backend(name: str = "engine", model: str | None = None, base_url: str | None = None, **kwargs):
    """Build a backend by name; `model` None means the embedded SmolLM2 (for openai: the served model)."""
    if name == "engine":
        from flagstack.annotate.backends.engine import EngineBackend

        return EngineBackend(model, **kwargs)
    if name in ("hf", "hf-cached"):
        from flagstack.annotate.backends.hf import HFBackend

        return HFBackend(model, prefix_cache=name == "hf-cached", **kwargs)
    if name == "openai":
        from flagstack.annotate.backends.openai import OpenAIBackend

        if not base_url:
            raise ValueError("backend openai needs --base-url (an OpenAI-compatible endpoint)")
        return OpenAIBackend(base_url, model, **kwargs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
