"""Content-keyed stage runs: a stage over one input is computed once per
(input content, stage config, code version) and its output directory reused afterwards.

This is what makes a killed build resumable and a repeated build free: the key names a directory
under the work root; the directory appears (one rename) only when the stage finished. A finished
directory is reused only while every file it recorded is there with the recorded checksum; before
it appears, the rows its shards hold must be the rows its stats claim (a stage that overwrote one
shard with another fails here, naming itself).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import xxhash

import pipeline
from pipeline.ids import content_id, file_sha256
from pipeline.lineage import LineageError, units
from pipeline.shards import STATS_FILE, count_rows, read_stats, stage_output, write_stats
from pipeline.stats import StageStats

FILES = "_files.json"  # relative path -> xxh3 of every file a finished stage directory holds
DROPPED_GLOB = "dropped-*.parquet"


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


def _file_hash(path: Path) -> str:
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): _file_hash(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in (STATS_FILE, FILES)}


def is_complete(directory: Path) -> bool:
    """A finished stage directory whose recorded files are all there, unchanged."""
    directory = Path(directory)
    try:
        recorded = json.loads((directory / FILES).read_text())
        return (directory / STATS_FILE).is_file() and all(
            _file_hash(directory / rel) == digest for rel, digest in recorded.items())
    except (OSError, ValueError):
        return False


def _discard(directory: Path) -> None:
    """Move an incomplete or altered result out of the way (atomically) and remove it."""
    if directory.exists():
        trash = directory.parent / f".stale-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(directory, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _check_written(stage: str, directory: Path, stats: StageStats, outputs: str) -> None:
    """The shards on disk hold exactly the rows the stage says it wrote and dropped."""
    written = count_rows(sorted(directory.glob(outputs)))
    dropped = count_rows(sorted(directory.rglob(DROPPED_GLOB)))
    if written != stats.outputs_written or dropped != stats.rows_dropped:
        raise LineageError(
            f"{stage}: its shards hold {written} output and {dropped} dropped rows, its counts say "
            f"{stats.outputs_written} and {stats.rows_dropped} (a shard overwritten or left out)")


def run_cached(work_root: Path, stage: str, key: str, compute: Callable[[Path], StageStats],
               outputs: str = "part-*.parquet") -> dict:
    """Run `compute(tmp_dir)` unless `work_root/stage/key` already holds a complete result.

    `outputs` is the glob (relative to the stage directory) of the shards the next stage reads.
    """
    final = Path(work_root) / stage / key
    if is_complete(final):
        return {**stage_result(final, read_stats(final), outputs), "cached": True}
    _discard(final)
    with stage_output(final) as tmp:
        stats = compute(tmp).check()
        stats.unit_in, stats.unit_out = units(stage)
        _check_written(stage, tmp, stats, outputs)
        write_stats(tmp, stats.to_dict())
        (tmp / FILES).write_text(json.dumps(_checksums(tmp), sort_keys=True))
    return {**stage_result(final, read_stats(final), outputs), "cached": False}
