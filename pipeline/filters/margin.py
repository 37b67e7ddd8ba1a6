"""Margin filter: min/max score margin, and budgeted "smallest margins first" selection.

Small-margin pairs are the informative ones ("Not All Preference Pairs Are Created Equal"); a
budget keeps the N pairs of the whole build with the smallest margins. The budget is a two-step
filter: `budget_cutoff` scans the margins of every shard (two columns, O(N) memory) and returns
the largest (margin, pair_id) key that fits; `margin_shard` then filters each shard against it.
Ties in margin are broken by pair_id, so the selection never depends on shard order.

The margin is the annotator's raw difference, the pair's `score_margin` column (score_chosen -
score_rejected; not `margin`, which is TRL's logit-scale margin), or with `normalized: true` the
per-prompt normalised margin in `metadata.margin_normalized` (score_margin / the score spread of the
prompt's candidates).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, model_validator

from pipeline.filters.pair_filter import Decision, filter_pairs, metadata_of
from pipeline.config import Strict
from pipeline.shards import DEFAULT_SHARD_ROWS, iter_rows
from pipeline.stats import StageStats

STAGE = "margin"
_UNSET = object()


class MarginConfig(Strict):
    min_margin: float | None = Field(
        None, description="drop pairs whose score margin (score_chosen - score_rejected) is below this")
    max_margin: float | None = Field(None, description="drop pairs whose score margin is above this")
    normalized: bool = Field(False, description="use the per-prompt normalised margin")
    budget: int | None = Field(
        None, ge=1, description="keep at most this many pairs of the build, smallest margins first")

    @model_validator(mode="after")
    def _range(self) -> "MarginConfig":
        if (self.min_margin is not None and self.max_margin is not None
                and self.min_margin > self.max_margin):
            raise ValueError("min_margin is greater than max_margin")
        return self


Key = tuple[float, str]


def margin_of(row: dict, meta: dict, config: MarginConfig) -> float | None:
    value = meta.get("margin_normalized") if config.normalized else row.get("score_margin")
    return None if value is None else float(value)


def _check(margin: float | None, config: MarginConfig) -> tuple[str | None, str]:
    if margin is None:
        return "margin_missing", "pair has no " + ("normalised margin" if config.normalized
                                                   else "score margin (no scores)")
    if config.min_margin is not None and margin < config.min_margin:
        return "margin_below_min", f"margin {margin:g} < {config.min_margin:g}"
    if config.max_margin is not None and margin > config.max_margin:
        return "margin_above_max", f"margin {margin:g} > {config.max_margin:g}"
    return None, ""


def _eligible_keys(shards: list[Path], config: MarginConfig) -> Iterator[Key]:
    for row in iter_rows(shards, columns=["pair_id", "score_margin", "metadata"]):
        margin = margin_of(row, metadata_of(row), config)
        if _check(margin, config)[0] is None:
            yield (margin, row["pair_id"])


def budget_cutoff(shards: list[Path], config: MarginConfig) -> Key | None:
    """The largest (margin, pair_id) the budget keeps across all `shards`; None when every pair
    passing min/max fits in the budget (nothing is cut)."""
    if config.budget is None:
        return None
    smallest = heapq.nsmallest(config.budget + 1, _eligible_keys(shards, config))
    return smallest[config.budget - 1] if len(smallest) > config.budget else None


def margin_shard(in_shard: Path, out_dir: Path, config: MarginConfig, cutoff: Key | None = _UNSET,
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
    """Drop pairs outside [min_margin, max_margin] (`margin_below_min`, `margin_above_max`,
    `margin_missing`) and, with a budget, those past `cutoff` (`over_budget`)."""
    if config.budget is not None and cutoff is _UNSET:
        raise ValueError("a margin budget needs the build-wide cutoff: call budget_cutoff first")

    def decide(row: dict, meta: dict) -> Decision:
        margin = margin_of(row, meta, config)
        reason, detail = _check(margin, config)
        if reason is None and config.budget is not None and cutoff is not None:
            if (margin, row["pair_id"]) > cutoff:
                reason = "over_budget"
                detail = f"margin {margin:g} beyond the {config.budget} smallest (cutoff {cutoff[0]:g})"
        return reason, detail, {}

    return filter_pairs(in_shard, out_dir, STAGE, decide, shard_rows)


def margin_build(in_shards: list[Path], out_root: Path, config: MarginConfig,
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> list[StageStats]:
    """Both steps over a whole build, one output directory per input shard (`out_root/00000`...)."""
    cutoff = budget_cutoff(in_shards, config)
    return [margin_shard(s, Path(out_root) / f"{i:05d}", config, cutoff, shard_rows)
            for i, s in enumerate(in_shards)]
