"""`load_engine`: from a model name (registry entry, directory or hub id) to a started engine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.engines.base import Engine

EngineKind = Literal["vllm", "transformers", "http"]


def load_engine(name_or_spec: str | Path, engine: EngineKind = "vllm", **opts) -> Engine:
    """Start an engine for a model.

    vllm / transformers: `name_or_spec` is a registry name (`data/models.yaml`; packaged models are
    converted on first use), a local directory or a hub id; `opts` go to the engine (dtype,
    max_model_len, ...). http: `name_or_spec` is the served model name and `opts` the HTTP engine's
    settings (base_urls, ...).
    """
    name = str(name_or_spec)
    if engine == "http":
        from pipeline.engines.http_engine import HttpEngine

        return HttpEngine(name, **opts)
    from pipeline.engines.packaged import resolve

    location = resolve(name_or_spec)
    opts.setdefault("model_id", name)
    if engine == "vllm":
        from pipeline.engines.vllm_engine import VLLMEngine

        return VLLMEngine(location, **opts)
    if engine == "transformers":
        from pipeline.engines.hf_engine import TransformersEngine

        return TransformersEngine(location, **opts)
    raise ValueError(f"unknown engine {engine!r} (vllm, transformers, http)")
