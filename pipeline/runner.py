"""Content-keyed stage runs: a stage over one input is computed once per
(input content, stage config, code version) and its output directory reused afterwards.

This is what makes a killed build resumable and a repeated build free: the key names a directory
under the work root; the directory appears (one rename) only when the stage finished.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import xxhash

import pipeline
from pipeline.ids import content_id, file_sha256
from pipeline.shards import read_stats, stage_output, write_stats
from pipeline.stats import StageStats


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


def stage_result(directory: Path, stats: dict, outputs: str = "part-*.parquet") -> dict:
    """A finished stage directory as the small dict tasks pass around: shard paths and stats."""
    return {
        "dir": str(directory),
        "outputs": [str(p) for p in sorted(directory.glob(outputs))],
        "dropped": [str(p) for p in sorted(directory.rglob("dropped-*.parquet"))],
        "stats": stats,
        "key": directory.name,
    }


def run_cached(work_root: Path, stage: str, key: str, compute: Callable[[Path], StageStats],
               outputs: str = "part-*.parquet") -> dict:
    """Run `compute(tmp_dir)` unless `work_root/stage/key` already holds a finished result.

    `outputs` is the glob (relative to the stage directory) of the shards the next stage reads.
    """
    final = Path(work_root) / stage / key
    cached = read_stats(final)
    if cached is not None:
        return {**stage_result(final, cached, outputs), "cached": True}
    with stage_output(final) as tmp:
        stats = compute(tmp).check().to_dict()
        write_stats(tmp, stats)
    return {**stage_result(final, read_stats(final), outputs), "cached": False}
