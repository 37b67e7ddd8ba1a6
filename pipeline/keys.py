"""Content keys: what identifies a stage's output (input content + stage config + code version)."""

from __future__ import annotations

import functools
from pathlib import Path

import xxhash

import pipeline
from pipeline.ids import content_id, file_sha256


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + a hash of the library's source: changes whenever the code does."""
    h = xxhash.xxh3_64()
    root = Path(pipeline.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return f"{pipeline.__version__}+{h.hexdigest()}"


def content_hash(path: Path) -> str:
    """sha256 of a file, or of the sorted files of a directory."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    return content_id("", [(str(p.relative_to(path)), file_sha256(p))
                           for p in sorted(path.rglob("*")) if p.is_file()])


def stage_key(stage: str, input_hashes: list[str], config: str) -> str:
    return content_id(f"{stage}-", input_hashes, config, code_version())
