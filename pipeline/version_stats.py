"""Statistics computed from a published version's own Parquet files (not from its manifest):
row counts, score/margin/CHES distributions, length statistics and length bias, drops by reason.

Shared by the data card, the HTML report and `prefpipe datasets diff`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from pipeline.filters.length import bias_of_lengths
from pipeline.tables import DROPPED, PAIR

PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin",
                "chosen_model", "rejected_model", "annotator", "source", "source_row", "metadata"]
DISTRIBUTIONS = ["score_chosen", "score_rejected", "margin"]
LENGTHS = ["prompt_chars", "chosen_chars", "rejected_chars"]


def _read(files: list[Path], schema, columns: list[str]) -> pl.DataFrame:
    if not files:
        return pl.from_arrow(schema.empty_table()).select(columns)
    return pl.read_parquet([str(f) for f in files], columns=columns)


def pairs_frame(version_dir: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """The version's pairs (`data/*.parquet`) with character lengths added; empty frame if none."""
    files = sorted((Path(version_dir) / "data").glob("*.parquet"))
    df = _read(files, PAIR, columns or PAIR_COLUMNS)

    def chars(col: str) -> pl.Expr:
        return (pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars())
                .list.sum().fill_null(0).cast(pl.Int64).alias(f"{col}_chars"))

    return df.with_columns([chars(c) for c in ("prompt", "chosen", "rejected") if c in df.columns])


def dropped_frame(version_dir: Path) -> pl.DataFrame:
    files = sorted((Path(version_dir) / "dropped").glob("*.parquet"))
    return _read(files, DROPPED, ["stage", "reason"])


def summary(values: pl.Series) -> dict:
    """count, missing, mean, std, min, quartiles, max of a numeric column (nulls/NaN ignored)."""
    s = values.cast(pl.Float64, strict=False)
    total = len(s)
    s = s.drop_nulls().drop_nans()
    out: dict = {"count": len(s), "missing": total - len(s)}
    if len(s) == 0:
        return out
    q = {k: s.quantile(p, interpolation="linear") for k, p in (("p25", .25), ("median", .5), ("p75", .75))}
    std = s.std() if len(s) > 1 else 0.0
    out.update(mean=_r(s.mean()), std=_r(std), min=_r(s.min()), p25=_r(q["p25"]),
               median=_r(q["median"]), p75=_r(q["p75"]), max=_r(s.max()))
    return out


def _r(x) -> float:
    return round(float(x), 6) if x is not None and not math.isnan(float(x)) else float("nan")


def metadata_values(metadata: pl.Series, key: str) -> pl.Series:
    """Numeric `key` of every row's JSON metadata (null where absent or not JSON)."""
    out = []
    for text in metadata.to_list():
        try:
            v = json.loads(text).get(key) if text else None
        except (ValueError, AttributeError):
            v = None
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return pl.Series(key, out, dtype=pl.Float64)


def drops_by_reason(dropped: pl.DataFrame) -> list[dict]:
    """Rows in `dropped/` per (stage, reason), as found in the files."""
    if dropped.is_empty():
        return []
    counts = dropped.group_by("stage", "reason").len().sort("stage", "reason")
    return [{"stage": r["stage"], "reason": r["reason"], "rows": r["len"]} for r in counts.iter_rows(named=True)]


def version_stats(version_dir: Path, df: pl.DataFrame | None = None) -> dict:
    """Everything the card, report and diff compute from the data itself."""
    df = pairs_frame(version_dir) if df is None else df
    dropped = dropped_frame(version_dir)
    ches = metadata_values(df["metadata"], "ches")
    models = sorted({m for c in ("chosen_model", "rejected_model") for m in df[c].drop_nulls().to_list()})
    return {
        "rows": df.height,
        "rows_dropped": dropped.height,
        "dropped_by_reason": drops_by_reason(dropped),
        "distributions": {c: summary(df[c]) for c in DISTRIBUTIONS},
        "ches": summary(ches),
        "lengths": {c: summary(df[c]) for c in LENGTHS},
        "length_bias": bias_of_lengths(df.select(c="chosen_chars", r="rejected_chars")),
        "models_in_data": models,
        "annotators": sorted(set(df["annotator"].drop_nulls().to_list())),
    }
