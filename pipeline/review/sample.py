"""Which pairs a person reviews: strata of a version and a seeded, stratified sample of them.

Each pair of a version gets one stratum. Flags come first, as far as the pair's metadata JSON
records them: `judge_flip` (the judge's verdict changed when the responses swapped places:
`flipped`, or `verdict_ab` != `verdict_ba`), `small_margin` (a tie broken by a small margin:
`margin_normalized` at most 0.1 of the prompt's score spread, or `score_margin` within twice the
recipe's `pairs.tie_tolerance`), `length_borderline` (the length guard's chosen/rejected ratio,
from `length_chosen`/`length_rejected` or the texts, within [0.75, 1] times its `max_ratio`).
Unflagged pairs fall in `margin_q1`..`margin_q4`, quartiles of `score_margin` by rank, or
`unscored` (source pairs carry no score). Strata never depend on the seed.

The sample takes one pair per stratum per round (strata in a seeded order each round, pairs in a
seeded order within each), so small flagged strata are covered in full and a larger sample starts
with the smaller one. Which response is shown left is a seeded coin per pair. The same version and
seed always give the same sample, order and sides.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl

FLAGS = ("judge_flip", "small_margin", "length_borderline")
QUARTILES = 4
SMALL_NORMALIZED_MARGIN = 0.1
BORDERLINE = 0.75  # share of the guard's max_ratio from which a kept pair is borderline


@dataclass(frozen=True)
class Stratified:
    pair_id: str
    stratum: str
    flags: tuple[str, ...]
    source: str | None
    length_chosen: int = 0  # characters
    length_rejected: int = 0


@dataclass(frozen=True)
class Sampled:
    pair_id: str
    stratum: str
    left: str  # chosen | rejected: which response the page shows on the left


def data_files(version_dir: Path) -> list[str]:
    return [str(p) for p in sorted((Path(version_dir) / "data").glob("*.parquet"))]


def _meta(text: str | None) -> dict:
    try:
        meta = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _lengths(column: str) -> list[pl.Expr]:
    """The response's length in chars and in words (the length guard's two units)."""
    text = pl.col(column).list.eval(pl.element().struct.field("content").fill_null("")).list.join("")
    return [text.str.len_chars().alias(f"chars_{column}"), text.str.count_matches(r"\S+").alias(f"words_{column}")]


def flags_of(row: dict, meta: dict, manifest: dict) -> tuple[str, ...]:
    """The review flags of one pair (FLAGS order)."""
    recipe = manifest.get("recipe") or {}
    out = []
    if meta.get("flipped") is True or meta.get("judge_flipped") is True or (
            meta.get("verdict_ab") is not None and meta.get("verdict_ba") is not None
            and meta["verdict_ab"] != meta["verdict_ba"]):
        out.append("judge_flip")
    tol = ((recipe.get("pairs") or {}).get("tie_tolerance") or 0.0)
    normalized, margin = meta.get("margin_normalized"), row.get("score_margin")
    if (isinstance(normalized, (int, float)) and normalized <= SMALL_NORMALIZED_MARGIN) or (
            tol > 0 and margin is not None and margin <= 2 * tol):
        out.append("small_margin")
    guard = (recipe.get("filters") or {}).get("length") or {}
    if guard.get("max_ratio"):
        unit = guard.get("unit") or "chars"
        n_c, n_r = meta.get("length_chosen"), meta.get("length_rejected")
        if not isinstance(n_c, int) or not isinstance(n_r, int):
            n_c, n_r = row[f"{unit}_chosen"], row[f"{unit}_rejected"]
        if BORDERLINE * guard["max_ratio"] <= n_c / max(n_r, 1) <= guard["max_ratio"]:
            out.append("length_borderline")
    return tuple(out)


def stratify(version_dir: Path, manifest: dict) -> list[Stratified]:
    """Every distinct pair of the version with its stratum, ordered by pair_id."""
    files = data_files(version_dir)
    if not files:
        return []
    df = pl.scan_parquet(files).select("pair_id", "score_margin", "source", "metadata",
                                       *_lengths("chosen"), *_lengths("rejected")) \
        .unique("pair_id", keep="first", maintain_order=True).sort("pair_id").collect()
    rows = []
    for row in df.iter_rows(named=True):
        rows.append((row, flags_of(row, _meta(row["metadata"]), manifest)))
    ranked = sorted((r for r, f in rows if not f and r["score_margin"] is not None),
                    key=lambda r: (r["score_margin"], r["pair_id"]))
    quartile = {r["pair_id"]: f"margin_q{1 + i * QUARTILES // len(ranked)}" for i, r in enumerate(ranked)}
    return [Stratified(r["pair_id"], f[0] if f else quartile.get(r["pair_id"], "unscored"), f, r["source"],
                       r["chars_chosen"], r["chars_rejected"]) for r, f in rows]


def left_side(pair_id: str, seed: int) -> str:
    return "chosen" if random.Random(f"side:{seed}:{pair_id}").random() < 0.5 else "rejected"


def draw(pairs: list[Stratified], n: int, seed: int, key: str = "") -> list[Sampled]:
    """`n` pairs (or all of them), one per stratum per round; `key` (NAME@vN) salts the seed."""
    strata: dict[str, list[Stratified]] = {}
    for p in sorted(pairs, key=lambda p: p.pair_id):
        strata.setdefault(p.stratum, []).append(p)
    for name, members in strata.items():
        random.Random(f"order:{key}:{seed}:{name}").shuffle(members)
    order = random.Random(f"rounds:{key}:{seed}")
    picked: list[Sampled] = []
    depth = 0
    while len(picked) < n and any(len(m) > depth for m in strata.values()):
        names = sorted(s for s, m in strata.items() if len(m) > depth)
        order.shuffle(names)
        for name in names:
            if len(picked) == n:
                break
            p = strata[name][depth]
            picked.append(Sampled(p.pair_id, p.stratum, left_side(p.pair_id, seed)))
        depth += 1
    return picked


def load_pairs(version_dir: Path, pair_ids: list[str]) -> dict[str, dict]:
    """pair_id -> the full pair row, for the given ids (first row of a repeated id)."""
    files = data_files(version_dir)
    if not files or not pair_ids:
        return {}
    df = pl.scan_parquet(files).filter(pl.col("pair_id").is_in(list(pair_ids))) \
        .unique("pair_id", keep="first", maintain_order=True).collect()
    return {r["pair_id"]: r for r in df.iter_rows(named=True)}
