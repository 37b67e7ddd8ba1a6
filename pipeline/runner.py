"""Content-keyed stage runs: a stage over one input is computed once per
(input content, stage config, code version) and its output directory reused afterwards.

This is what makes a killed build resumable and a repeated build free: the key names a directory
under the work root; the directory appears (one rename) only when the stage finished. A finished
directory is reused only while every file it recorded is there with the recorded checksum; before
it appears, the rows its shards hold must be the rows its stats claim (a stage that overwrote one
shard with another fails here, naming itself).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import xxhash

from pipeline.keys import code_version, content_hash, stage_key  # noqa: F401 - the runner's API
from pipeline.lineage import LineageError
from pipeline.shards import STATS_FILE, count_rows, read_stats, stage_output, write_stats
from pipeline.stages.base import Stage, StageResult, Unit
from pipeline.stats import StageStats

FILES = "_files.json"  # relative path -> xxh3 of every file a finished stage directory holds
DROPPED_GLOB = "dropped-*.parquet"


def stage_result(stage: str, directory: Path, outputs: str, cached: bool) -> StageResult:
    """A finished stage directory as what crosses the seam: shard paths and counts."""
    return StageResult(stage=stage, dir=str(directory), outputs=[str(p) for p in sorted(directory.glob(outputs))],
                       dropped=[str(p) for p in sorted(directory.rglob(DROPPED_GLOB))],
                       stats=read_stats(directory), key=directory.name, cached=cached)


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
               outputs: str = "part-*.parquet", units: tuple[str | None, str | None] = (None, None)
               ) -> StageResult:
    """Run `compute(tmp_dir)` unless `work_root/stage/key` already holds a complete result.

    `outputs` is the glob (relative to the stage directory) of the shards the next stage reads;
    `units` what the stage reads and writes (recorded with its counts).
    """
    final = Path(work_root) / stage / key
    if is_complete(final):
        return stage_result(stage, final, outputs, cached=True)
    _discard(final)
    with stage_output(final) as tmp:
        stats = compute(tmp).check()
        stats.unit_in, stats.unit_out = units
        _check_written(stage, tmp, stats, outputs)
        write_stats(tmp, stats.to_dict())
        (tmp / FILES).write_text(json.dumps(_checksums(tmp), sort_keys=True))
    return stage_result(stage, final, outputs, cached=False)


def unit_dir(stage: Stage, unit: Unit) -> Path:
    return Path(stage.context.work_root) / stage.name / stage.key(unit)


def units_complete(stage: Stage, units: list[Unit]) -> bool:
    """Every unit's result is on disk under this build's work root, intact."""
    return all(is_complete(unit_dir(stage, u)) for u in units)


def run_units(stage: Stage, units: list[Unit]) -> list[StageResult]:
    """The executor's one call: run (or reuse) each unit of a stage, sharing its resources."""
    with stage.resources() as resources:
        return [run_cached(stage.context.work_root, stage.name, stage.key(u),
                           lambda out, u=u: stage.run(u, out, resources), stage.outputs,
                           (stage.unit_in, stage.unit_out)) for u in units]
