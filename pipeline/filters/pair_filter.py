"""The loop every pair filter shares: read a pair shard, keep or drop each pair (with a reason),
merge the filter's scores into the kept pair's `metadata` JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.progress import report
from pipeline.shards import DEFAULT_SHARD_ROWS, DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR

# decide(row, metadata) -> (drop reason or None, detail, scores merged into metadata)
Decision = tuple[str | None, str, dict]


def metadata_of(row: dict) -> dict:
    try:
        meta = json.loads(row["metadata"]) if row.get("metadata") else {}
    except json.JSONDecodeError:
        meta = {"source_metadata": row["metadata"]}
    return meta if isinstance(meta, dict) else {"source_metadata": meta}


def filter_pairs(in_shard: Path, out_dir: Path, stage: str,
                 decide: Callable[[dict, dict], Decision],
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
    """`part-*.parquet` (kept pairs) + `dropped-<stage>-*.parquet` (the rest, each with its reason)."""
    stats = StageStats(stage)
    out = ShardWriter(out_dir, PAIR, shard_rows=shard_rows)
    dropped = DroppedWriter(out_dir, stage, shard_rows=shard_rows)
    for row in iter_rows(in_shard):
        meta = metadata_of(row)
        reason, detail, scores = decide(row, meta)
        row = {**row, "metadata": json.dumps({**meta, **scores}, sort_keys=True)}
        if reason is None:
            out.write(row)
            stats.keep()
        else:
            dropped.drop(reason, detail=detail, row=row, source=row.get("source"),
                         source_row=row.get("source_row"), row_id=row["pair_id"],
                         conversation_id=row["conversation_id"])
            stats.drop(reason)
    report(stage, stats.rows_in)
    out.close()
    dropped.close()
    return stats.check()


def response_text(messages: list[dict] | None) -> str:
    """The text of a chosen/rejected message list (normally one assistant message)."""
    return "".join(m["content"] or "" for m in messages or [])
