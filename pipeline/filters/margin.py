"""Margin filter: min/max score margin, and budgeted "smallest margins first" selection.

Small-margin pairs are the informative ones ("Not All Preference Pairs Are Created Equal"); a
budget keeps the N pairs of the whole build with the smallest margins. The budget is a two-step
cut over the whole build (`BuildCut`): `prepare` scans the margins of every shard (two columns) for
the largest (margin, pair_id) key that fits; `filter_shard` then filters each shard against it.
Ties in margin are broken by pair_id, so the selection never depends on shard order.

The margin is the annotator's raw difference, the pair's `score_margin` column (score_chosen -
score_rejected; not `margin`, which is TRL's logit-scale margin), or with `normalized: true` the
per-prompt normalised margin in `metadata.margin_normalized` (score_margin / the score spread of the
prompt's candidates).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.config import Strict
from pipeline.filters.pair_filter import BuildCut, Drop


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


def margin_of(row: dict, meta: dict, config: MarginConfig) -> float | None:
    value = meta.get("margin_normalized") if config.normalized else row.get("score_margin")
    return None if value is None else float(value)


def _check(margin: float | None, config: MarginConfig) -> Drop | None:
    if margin is None:
        return Drop("margin_missing", "pair has no " + ("normalised margin" if config.normalized
                                                        else "score margin (no scores)"))
    if config.min_margin is not None and margin < config.min_margin:
        return Drop("margin_below_min", f"margin {margin:g} < {config.min_margin:g}")
    if config.max_margin is not None and margin > config.max_margin:
        return Drop("margin_above_max", f"margin {margin:g} > {config.max_margin:g}")
    return None


class MarginCut(BuildCut):
    """Drop pairs outside [min_margin, max_margin] (`margin_below_min`, `margin_above_max`,
    `margin_missing`) and, with a budget, all but the build's `budget` smallest (`over_budget`)."""

    config: MarginConfig
    columns = ["pair_id", "score_margin", "metadata"]
    cut_reason = "over_budget"

    @property
    def cuts(self) -> bool:
        return self.config.budget is not None

    def rule(self, row: dict, meta: dict) -> Drop | None:
        return _check(margin_of(row, meta, self.config), self.config)

    def key(self, row: dict, meta: dict) -> float | None:
        margin = margin_of(row, meta, self.config)
        return margin if _check(margin, self.config) is None else None

    def keep(self, ranked: int) -> int | None:
        return self.config.budget

    def cut_detail(self, value: float, cutoff) -> str:
        return f"margin {value:g} beyond the {self.config.budget} smallest (cutoff {cutoff[0]:g})"
