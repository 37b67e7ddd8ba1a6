"""Incremental builds: read only what earlier versions have not seen.

Each version's manifest records, per input, the bytes consumed, their sha256 and the rows read.
The next incremental build compares: an unchanged input is skipped; a JSON-lines file that only
grew (its old bytes hash the same) is read from where the last version stopped; anything else is
read whole, and conversations an earlier version already holds are dropped as
`seen_in_earlier_version` (ids kept in each version's `index/conversation_ids.parquet`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ingest.readers import JSON_SUFFIXES, is_json_array
from pipeline.publish.paths import absolute
from pipeline.shards import DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import CONVERSATION

IDS_FILE = "index/conversation_ids.parquet"


def prefix_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left > 0 and (block := f.read(min(1 << 20, left))):
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def appendable(path: Path) -> bool:
    """Plain JSON-lines files can be resumed at a byte offset."""
    return (path.is_file() and path.name.endswith(JSON_SUFFIXES) and not path.name.endswith(".gz")
            and not is_json_array(path))


def plan_input(current: dict, previous: dict | None) -> dict:
    """Where to start reading one input, given its entry in the parent manifest.

    Returns `current` plus start_offset, start_row and `skip` (nothing new).
    """
    path = Path(current["path"])
    size = path.stat().st_size if path.is_file() else None
    plan = {**current, "bytes": size, "start_offset": 0, "start_row": 0, "skip": False}
    if previous is None:
        return plan
    if previous.get("sha256") == current["sha256"]:
        return {**plan, "skip": True, "start_offset": size or 0, "start_row": previous.get("rows_total", 0)}
    prev_bytes = previous.get("bytes")
    if (appendable(path) and prev_bytes and size and size > prev_bytes
            and prefix_sha256(path, prev_bytes) == previous.get("sha256")):
        return {**plan, "start_offset": prev_bytes, "start_row": previous.get("rows_total", 0)}
    return plan


def plan_inputs(inputs: list[dict], parent_manifest: dict | None, recipe_dir: Path) -> list[dict]:
    """Each input's plan; the parent's inputs are matched by path (theirs are relative to `recipe_dir`)."""
    previous = {absolute(i["path"], recipe_dir): i for i in (parent_manifest or {}).get("inputs", [])}
    return [plan_input(i, previous.get(i["path"])) for i in inputs]


def seen_ids(version_dirs: list[Path]) -> set[str]:
    seen: set[str] = set()
    for v in version_dirs:
        path = Path(v) / IDS_FILE
        if path.exists():
            seen.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return seen


def drop_seen(in_shard: Path, out_dir: Path, seen: set[str], shard_rows: int, *, stage: str) -> StageStats:
    """Drop conversations an earlier version already holds."""
    stats = StageStats(stage)
    out = ShardWriter(out_dir, CONVERSATION, shard_rows=shard_rows)
    dropped = DroppedWriter(out_dir, stage, shard_rows=shard_rows)
    for row in iter_rows(in_shard):
        if row["id"] in seen:
            dropped.drop("seen_in_earlier_version", row=row, source=row["source"],
                         source_row=row["source_row"], row_id=row["id"], match_id=row["id"],
                         conversation_id=row["id"])
            stats.drop("seen_in_earlier_version")
        else:
            out.write(row)
            stats.keep()
    out.close()
    dropped.close()
    return stats.check()


def write_ids(path: Path, conversation_shards: list[Path], parent_version: Path | None) -> Path:
    """The conversation ids a version has seen: its parent's plus those ingested now."""
    ids = seen_ids([parent_version]) if parent_version else set()
    for row in iter_rows(conversation_shards, columns=["id"]):
        ids.add(row["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": sorted(ids)}), path)
    return path
