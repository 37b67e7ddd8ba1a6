"""The one way every stage (and eval-annotator) opens engines: from (model, engine kind, options)
to a started engine, with what each kind can do read from the engine classes themselves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pipeline.engines.base import Engine
from pipeline.engines.hf_engine import TransformersEngine
from pipeline.engines.http_engine import HttpEngine
from pipeline.engines.vllm_engine import VLLMEngine

EngineKind = Literal["vllm", "transformers", "http"]
ENGINES: dict[str, type] = {"vllm": VLLMEngine, "transformers": TransformersEngine, "http": HttpEngine}

# (model name or path, engine kind, engine keyword arguments)
EngineSpec = tuple[str, str, dict]


def capabilities(kind: str) -> frozenset[str]:
    """Everything an engine kind can offer (a given model may offer less: a transformers reward
    model only scores rewards)."""
    return ENGINES[kind].OFFERS


def load_engine(name_or_spec: str | Path, engine: EngineKind = "vllm", **opts) -> Engine:
    """Start an engine for a model.

    vllm / transformers: `name_or_spec` is a registry name (`data/models.yaml`; packaged models are
    converted on first use), a local directory or a hub id; `opts` go to the engine (dtype,
    max_model_len, ...). http: `name_or_spec` is the served model name and `opts` the HTTP engine's
    settings (base_urls, ...).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    name = str(name_or_spec)
    if engine == "http":
        return HttpEngine(name, **opts)
    from pipeline.engines.identity import model_identity
    from pipeline.engines.packaged import resolve

    opts.setdefault("model_id", model_identity(name))
    return ENGINES[engine](resolve(name_or_spec), **opts)


def spec_key(spec: EngineSpec) -> str:
    """What identifies an engine: same model (by identity: a directory rewritten in place is another
    model, so a resident engine is not reused for it), kind and options -> one engine."""
    from pipeline.engines.identity import model_identity

    model, kind, options = spec
    return json.dumps([str(model), model_identity(model, kind), kind, options], sort_keys=True, default=str)


def open_engines(specs: Mapping[str, EngineSpec]) -> dict[str, Engine]:
    """One engine per role; roles asking for the same model, kind and options share one. (Stages
    take theirs from the process's resident pool instead: `pipeline.engines.pool`.)"""
    loaded: dict[str, Engine] = {}
    engines: dict[str, Engine] = {}
    for role, (model, kind, options) in specs.items():
        key = spec_key((model, kind, options))
        if key not in loaded:
            loaded[key] = load_engine(model, kind, **options)
        engines[role] = loaded[key]
    return engines
