"""Length guard: optionally drop pairs whose chosen response is much longer than the rejected one,
and measure a version's length bias (how often the longer response is the chosen one).

Judges and humans both favour longer answers; DPO then learns verbosity. `max_ratio: 2.0` drops
pairs where len(chosen) > 2 * len(rejected) (`length_ratio`). Lengths are in characters or
whitespace-separated words of the response text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field

from pipeline.config import Strict
from pipeline.filters.pair_filter import Decision, Drop, Keep, RowFilter, response_text


class LengthConfig(Strict):
    max_ratio: float | None = Field(
        None, gt=1, description="drop pairs whose chosen is longer than this times the rejected")
    unit: Literal["chars", "words"] = "chars"


def text_length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


def too_long(chosen: str, rejected: str, config: LengthConfig) -> bool:
    """The guard's rule: the chosen response is more than `max_ratio` times the rejected one."""
    return config.max_ratio is not None and (
        text_length(chosen, config.unit) > config.max_ratio * max(text_length(rejected, config.unit), 1))


class LengthGuard(RowFilter):
    """Record both lengths in each pair's metadata; drop `length_ratio` pairs when configured."""

    config: LengthConfig

    def decide(self, row: dict, meta: dict) -> Decision:
        chosen, rejected, unit = response_text(row["chosen"]), response_text(row["rejected"]), self.config.unit
        n_c, n_r = text_length(chosen, unit), text_length(rejected, unit)
        scores = {"length_chosen": n_c, "length_rejected": n_r}
        if too_long(chosen, rejected, self.config):
            return Drop("length_ratio", f"chosen {n_c} vs rejected {n_r} {unit}", scores)
        return Keep(scores)


def _lengths(column: str, unit: str) -> pl.Expr:
    text = pl.col(column).list.eval(pl.element().struct.field("content")).list.join("")
    if unit == "words":
        return text.str.count_matches(r"\S+")
    return text.str.len_chars()


def bias_of_lengths(lengths: pl.DataFrame, unit: str = "chars") -> dict:
    """Length bias from per-pair lengths (columns `c`, `r`): `longer_chosen_rate` = share of pairs
    (of unequal length) whose chosen response is longer. The one definition card and manifest use."""
    row = lengths.select(pl.len().alias("pairs"),
                         (pl.col("c") > pl.col("r")).sum().alias("longer_chosen"),
                         (pl.col("c") == pl.col("r")).sum().alias("equal_length"),
                         pl.col("c").mean().alias("mean_length_chosen"),
                         pl.col("r").mean().alias("mean_length_rejected")).row(0, named=True)
    unequal = row["pairs"] - row["equal_length"]
    return {**row, "unit": unit, "longer_chosen": row["longer_chosen"] or 0,
            "equal_length": row["equal_length"] or 0,
            "longer_chosen_rate": round(row["longer_chosen"] / unequal, 6) if unequal else None}


def length_bias(shards: list[Path], unit: str = "chars") -> dict:
    """Length bias of a set of pair shards, for the manifest."""
    schema = {"c": pl.Int64, "r": pl.Int64}
    if not shards:
        return bias_of_lengths(pl.DataFrame(schema=schema), unit)
    return bias_of_lengths(pl.scan_parquet([str(s) for s in shards])
                           .select(_lengths("chosen", unit).alias("c"), _lengths("rejected", unit).alias("r"))
                           .collect(), unit)
