"""What identifies a model in request-cache keys, stage keys, annotator names and manifests.

A hub id is `<id>@<commit>` when its snapshot is in the local Hugging Face cache (the commit `main`
points to there, which is what the loaders read offline), so a cache updated to a new upload is a
new model; not cached, the id as written. A packaged registry name is `<name>@<revision>`, the revision a digest
of its registry entry (packages, version, GGUF sha256, dtype), so an upgrade that changes a name's
model is a new model everywhere. A local directory is `<directory name>@<digest of its files>` (a
registry entry with `source: local`, `<name>@<digest>`): the same files anywhere
give one identity, so a moved checkpoint keeps its cache and its names carry no machine's paths,
and files rewritten in place give another, so a retrained model is never served the old one's
cached outputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import xxhash

CHUNK = 1 << 22


def _signature(root: Path) -> tuple:
    return tuple((str(p.relative_to(root)), st.st_size, st.st_mtime_ns)
                 for p in sorted(root.rglob("*")) if p.is_file() and (st := p.stat()))


@functools.lru_cache(maxsize=64)
def _digest(root: str, signature: tuple) -> str:
    h = xxhash.xxh3_128()  # change detection, not security: reads several GB/s
    for rel, size, _ in signature:
        h.update(f"{rel}\0{size}\0".encode())
        with (Path(root) / rel).open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    return h.hexdigest()[:16]


def directory_digest(path: str | Path) -> str:
    """Digest of a directory's file names and bytes (recomputed only when a file's size or mtime
    changes within this process)."""
    root = Path(path).expanduser().resolve()
    return _digest(str(root), _signature(root))


def hub_snapshot(repo_id: str) -> Path | None:
    """The directory of the snapshot `main` points to in the local Hugging Face cache, or None (not
    cached, or not a hub id). The engines load a cached hub id from it, so what runs is the commit
    its identity names, never a newer upload fetched while online."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # HFValidationError: not a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def hub_revision(repo_id: str) -> str | None:
    """The commit (12 hex digits) of `hub_snapshot(repo_id)`, or None."""
    snapshot = hub_snapshot(repo_id)
    return snapshot.name[:12] if snapshot is not None else None


def model_identity(name_or_path: str | Path, engine: str | None = None) -> str:
    """`<dir name>@<digest>` for a local model directory, `<name>@<digest>` for a registry entry
    with `source: local` (of its directory) or a packaged one (of its spec: `spec_digest`),
    `<hub id>@<commit>` for a hub id (or a registry entry with `source: hub`) in the local cache, the
    snapshot the engines load (`hub_snapshot`), else the name as written (with `engine`
    "http", always: a served model's name is no path)."""
    from pipeline.engines.packaged import load_registry, spec_digest

    if engine == "http":
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return f"{path.resolve().name}@{directory_digest(path)}"
    spec = load_registry().get(str(name_or_path))
    if spec is not None and spec.source == "local" and Path(spec.path or "").expanduser().is_dir():
        return f"{name_or_path}@{directory_digest(spec.path)}"
    if spec is not None and spec.source.startswith("gguf"):
        return f"{name_or_path}@{spec_digest(spec)}"
    hub_id = str(name_or_path) if spec is None else spec.id if spec.source == "hub" else None
    revision = hub_revision(hub_id) if hub_id else None
    return f"{name_or_path}@{revision}" if revision else str(name_or_path)
