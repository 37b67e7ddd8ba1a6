"""The two pair-filter bases. A `RowFilter` only decides, per pair, `Keep` or `Drop(reason, detail)`;
its `filter_shard` reads the shard, counts and routes (kept pairs to `part-*`, the rest with their
reason to `dropped-<stage>-*`) and merges the filter's scores into the pair's `metadata` JSON. A
`BuildCut` is a row filter whose cut is ranked over the whole build (margin budget, CHES top
fraction): it keeps the `keep(n)` smallest `key`s of the n eligible pairs, ties broken by pair_id,
so the selection never depends on shard order."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pipeline.progress import report
from pipeline.shards import DEFAULT_SHARD_ROWS, DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR

Key = tuple[float, str]  # (rank value, pair_id)
_UNSET = object()  # a BuildCut whose cutoff was not computed yet


class Keep(NamedTuple):
    scores: dict = {}  # merged into the pair's metadata


class Drop(NamedTuple):
    reason: str
    detail: str = ""
    scores: dict = {}


Decision = Keep | Drop


def metadata_of(row: dict) -> dict:
    try:
        meta = json.loads(row["metadata"]) if row.get("metadata") else {}
    except json.JSONDecodeError:
        meta = {"source_metadata": row["metadata"]}
    return meta if isinstance(meta, dict) else {"source_metadata": meta}


def response_text(messages: list[dict] | None) -> str:
    """The text of a chosen/rejected message list (normally one assistant message)."""
    return "".join(m["content"] or "" for m in messages or [])


class RowFilter:
    """Keep or drop each pair; `stage` names the drops and the counts."""

    def __init__(self, config, stage: str):
        self.config, self.stage = config, stage

    def decide(self, row: dict, meta: dict) -> Decision:
        raise NotImplementedError

    def filter_shard(self, in_shard: Path, out_dir: Path, shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
        """`part-*.parquet` (kept pairs) + `dropped-<stage>-*.parquet` (the rest, each with its reason)."""
        stats = StageStats(self.stage)
        out = ShardWriter(out_dir, PAIR, shard_rows=shard_rows)
        dropped = DroppedWriter(out_dir, self.stage, shard_rows=shard_rows)
        for row in iter_rows(in_shard):
            meta = metadata_of(row)
            decision = self.decide(row, meta)
            row = {**row, "metadata": json.dumps({**meta, **decision.scores}, sort_keys=True)}
            if isinstance(decision, Keep):
                out.write(row)
                stats.keep()
            else:
                dropped.drop(decision.reason, detail=decision.detail, row=row, source=row.get("source"),
                             source_row=row.get("source_row"), row_id=row["pair_id"],
                             conversation_id=row["conversation_id"])
                stats.drop(decision.reason)
        report(self.stage, stats.rows_in)
        out.close()
        dropped.close()
        return stats.check()


class BuildCut(RowFilter):
    """A row filter plus a cut ranked over the whole build: call `prepare(shards)` before
    `filter_shard`, or use `filter_build`. Subclasses give `rule` (the per-pair part), `key` (None:
    not ranked), `keep(n)` (how many of n ranked pairs stay; None: no cut) and the drop text."""

    columns = ["pair_id", "metadata"]  # what `key` reads when ranking
    cut_reason = "cut"
    cutoff: Key | None | object = _UNSET

    @property
    def cuts(self) -> bool:
        """Whether this configuration ranks at all (without it, `prepare` reads nothing)."""
        return True

    def rule(self, row: dict, meta: dict) -> Drop | None:
        return None

    def key(self, row: dict, meta: dict) -> float | None:
        raise NotImplementedError

    def keep(self, ranked: int) -> int | None:
        raise NotImplementedError

    def cut_detail(self, value: float, cutoff: Key) -> str:
        return f"{value:g} beyond the cutoff {cutoff[0]:g}"

    def _keys(self, shards: list[Path]) -> Iterator[Key]:
        for row in iter_rows(shards, columns=self.columns):
            value = self.key(row, metadata_of(row))
            if value is not None:
                yield (value, row["pair_id"])

    def prepare(self, shards: list[Path]) -> Key | None:
        """The largest key the cut keeps over all `shards` (None: nothing is cut)."""
        ranked = sum(1 for _ in self._keys(shards)) if self.cuts else 0
        k = self.keep(ranked) if self.cuts else None
        if k is None or k >= ranked:
            self.cutoff = None
        elif k <= ranked - k:  # the k-th smallest, from whichever end holds fewer keys
            self.cutoff = heapq.nsmallest(k, self._keys(shards))[-1]
        else:
            self.cutoff = heapq.nlargest(ranked - k + 1, self._keys(shards))[-1]
        return self.cutoff

    def decide(self, row: dict, meta: dict) -> Decision:
        if self.cutoff is _UNSET:
            if self.cuts:
                raise ValueError(f"{self.stage}: the build-wide cutoff is not computed: call prepare() first")
            self.cutoff = None
        drop = self.rule(row, meta)
        if drop is not None:
            return drop
        value = self.key(row, meta)
        if self.cutoff is not None and value is not None and (value, row["pair_id"]) > self.cutoff:
            return Drop(self.cut_reason, self.cut_detail(value, self.cutoff))
        return Keep()

    def filter_build(self, in_shards: list[Path], out_root: Path,
                     shard_rows: int = DEFAULT_SHARD_ROWS) -> list[StageStats]:
        """Both steps over a whole build, one output directory per input shard (`out_root/00000`...)."""
        self.prepare(in_shards)
        return [self.filter_shard(s, Path(out_root) / f"{i:05d}", shard_rows) for i, s in enumerate(in_shards)]
