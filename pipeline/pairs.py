"""Pair construction: conversations (or scored candidates) -> chosen/rejected pairs in TRL's
conversational preference format."""

from __future__ import annotations

from pathlib import Path

from pipeline.ids import pair_id
from pipeline.progress import report
from pipeline.shards import DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR

STAGE = "pairs"


def assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def source_pairs(in_shard: Path, out_dir: Path, shard_rows: int = 1000) -> StageStats:
    """One pair per conversation from the source's own `chosen`/`rejected` responses."""
    stats = StageStats(STAGE)
    out = ShardWriter(out_dir, PAIR, shard_rows=shard_rows)
    dropped = DroppedWriter(out_dir, STAGE, shard_rows=shard_rows)
    for conv in iter_rows(in_shard):
        by_label = {r["label"]: r for r in conv["responses"]}
        chosen, rejected = by_label.get("chosen"), by_label.get("rejected")
        reason = None
        if chosen is None or rejected is None:
            reason = "source_tie" if "tie" in by_label else "no_source_pair"
        elif chosen["content"].strip() == rejected["content"].strip():
            reason = "identical_responses"
        if reason:
            dropped.drop(reason, row=conv, source=conv["source"], source_row=conv["source_row"],
                         row_id=conv["id"])
            stats.drop(reason)
            continue
        out.write({
            "pair_id": pair_id(conv["id"], chosen["content"], rejected["content"]),
            "conversation_id": conv["id"],
            "prompt": conv["prompt"],
            "chosen": assistant(chosen["content"]),
            "rejected": assistant(rejected["content"]),
            "score_chosen": None, "score_rejected": None, "margin": None,
            "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "chosen_origin": "source", "rejected_origin": "source",
            "annotator": "source", "pair_rule": "source",
            "source": conv["source"], "source_row": conv["source_row"],
            "metadata": conv["metadata"],
        })
        stats.keep()
    report(STAGE, stats.rows_in)
    out.close()
    dropped.close()
    return stats.check()
