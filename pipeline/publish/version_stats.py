"""Statistics computed from a published version's own Parquet files (not from its manifest):
row counts, score/margin/CHES distributions, length statistics and length bias, drops by reason,
the prompts' languages.

Shared by the data card, the HTML report and `prefpipe datasets diff`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import polars as pl

from pipeline.stages.pair_filters import ChesStage
from pipeline.filters.length import bias_of_lengths
from pipeline.tables import DROPPED, PAIR

PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "score_margin",
                "margin", "chosen_model", "rejected_model", "chosen_origin", "rejected_origin", "annotator",
                "pair_rule", "source", "source_row", "metadata"]
# score_margin: the annotator's raw difference; margin: TRL's logit-scale margin (pipeline/pairs.py)
DISTRIBUTIONS = ["score_chosen", "score_rejected", "score_margin", "margin"]
LENGTHS = ["prompt_chars", "chosen_chars", "rejected_chars"]


def _read(files: list[Path], schema, columns: list[str]) -> pl.DataFrame:
    empty = pl.from_arrow(schema.empty_table())
    if not files:
        return empty.select(columns)
    present = set(pl.read_parquet_schema(str(files[0])))
    df = pl.read_parquet([str(f) for f in files], columns=[c for c in columns if c in present])
    if "score_margin" in columns and "score_margin" not in present and "score_chosen" in present:
        # a version published before schema 1.2, whose `margin` was the raw difference
        df = df.with_columns(score_margin=pl.col("score_chosen") - pl.col("score_rejected"))
    # other columns the schema gained after the version was published: null
    missing = [c for c in columns if c not in df.columns]
    return df.with_columns([pl.lit(None, dtype=empty.schema[c]).alias(c) for c in missing]).select(columns)


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


def fmt_num(x) -> str:
    """A number as the card, report and diff print it: floats to 4 significant digits, "-" for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


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


def ches_key(manifest: dict) -> str:
    """The CHES form the filter ranked and cut on (`ches.score` of the manifest or recipe)."""
    recipe_ches = ((manifest.get("recipe") or {}).get("filters") or {}).get("ches") or {}
    return (manifest.get("ches") or {}).get("score") or recipe_ches.get("score") or "ches"


def dropped_metadata_values(version_dir: Path, stage: str, key: str) -> list[float]:
    """Numeric `key` of the metadata of the pairs `stage` dropped (their rows are kept in `dropped/`)."""
    files = sorted((Path(version_dir) / "dropped").glob("*.parquet"))
    if not files:
        return []
    rows = pl.scan_parquet([str(f) for f in files]).filter(pl.col("stage") == stage).select("row").collect()
    meta = []
    for text in rows["row"].to_list():
        try:
            meta.append(json.loads(text).get("metadata") if text else None)
        except (ValueError, AttributeError):
            meta.append(None)
    return metadata_values(pl.Series(meta, dtype=pl.String), key).drop_nulls().to_list()


SCRIPT_LANGUAGES = {"CJK": "zh", "HANGUL": "ko", "CYRILLIC": "ru", "ARABIC": "ar", "DEVANAGARI": "hi",
                    "GREEK": "el", "HEBREW": "he", "THAI": "th", "BENGALI": "bn", "TAMIL": "ta"}
STOPWORDS = {lang: set(words.split()) for lang, words in {
    "en": "the and is are was to of in that it for you with on this what how be can do i my your",
    "fr": "le la les et est des une un du que qui pour dans pas je vous sur avec ce",
    "de": "der die das und ist nicht ein eine ich sie zu mit den von wie was auf für",
    "es": "el la los las y es de que en un una por para con no se qué cómo lo",
    "it": "il lo la gli le e è di che un una per non con sono come cosa questo",
    "pt": "o a os as e é de que um uma para com não do da em como você",
    "nl": "de het een en is van dat niet ik je met op voor zijn wat hoe"}.items()}
LANGUAGE_CHARS, LANGUAGE_PROMPTS, LANGUAGE_MIN_SHARE = 500, 500, 0.05


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of a text by its script, and for Latin script by stopwords (en, fr, de, es,
    it, pt, nl); None when it cannot tell. Enough for a card's `language` tag, not a classifier."""
    text = text[:LANGUAGE_CHARS]
    scripts = Counter("LATIN" if ch.isascii() else unicodedata.name(ch, "?").split(" ")[0]
                      for ch in text if ch.isalpha())
    if not scripts:
        return None
    script = scripts.most_common(1)[0][0]
    if script in ("CJK", "HIRAGANA", "KATAKANA"):
        return "ja" if scripts["HIRAGANA"] + scripts["KATAKANA"] else "zh"
    if script != "LATIN":
        return SCRIPT_LANGUAGES.get(script)
    words = Counter(re.findall(r"[^\W\d_]+", text.lower()))
    hits = {lang: sum(words[w] for w in stop) for lang, stop in STOPWORDS.items()}
    best = max(hits, key=hits.get)  # ties: the first listed (en)
    return best if hits[best] else None


def prompt_languages(df: pl.DataFrame) -> dict:
    """Languages of the user turns of the prompts (the first LANGUAGE_PROMPTS pairs by id): codes
    with at least LANGUAGE_MIN_SHARE of the prompts whose language was detected, most common first."""
    sample = df.sort("pair_id").head(LANGUAGE_PROMPTS)["prompt"].to_list() if df.height else []
    found = Counter(lang for messages in sample if (lang := detect_language(
        " ".join(m["content"] or "" for m in messages or [] if m["role"] == "user"))))
    total = sum(found.values())
    return {"languages": [lang for lang, n in found.most_common() if n >= LANGUAGE_MIN_SHARE * total],
            "prompts_checked": len(sample), "counts": dict(found.most_common())}


def drops_by_reason(dropped: pl.DataFrame) -> list[dict]:
    """Rows in `dropped/` per (stage, reason), as found in the files."""
    if dropped.is_empty():
        return []
    counts = dropped.group_by("stage", "reason").len().sort("stage", "reason")
    return [{"stage": r["stage"], "reason": r["reason"], "rows": r["len"]} for r in counts.iter_rows(named=True)]


def version_stats(version_dir: Path, df: pl.DataFrame | None = None, manifest: dict | None = None) -> dict:
    """Everything the card, report and diff compute from the data itself (`manifest`, default the
    version's own, only says which CHES form the filter cut on)."""
    version_dir = Path(version_dir)
    df = pairs_frame(version_dir) if df is None else df
    dropped = dropped_frame(version_dir)
    if manifest is None:
        manifest = json.loads((version_dir / "manifest.json").read_text()) \
            if (version_dir / "manifest.json").is_file() else {}
    key = ches_key(manifest)
    ches = {"kept": metadata_values(df["metadata"], key).drop_nulls().to_list(),
            "dropped": dropped_metadata_values(version_dir, ChesStage.name, key)}
    models = sorted({m for c in ("chosen_model", "rejected_model") for m in df[c].drop_nulls().to_list()})
    return {
        "rows": df.height,
        "rows_dropped": dropped.height,
        "dropped_by_reason": drops_by_reason(dropped),
        "distributions": {c: summary(df[c]) for c in DISTRIBUTIONS},
        "ches_score": key,
        "ches": summary(pl.Series(ches["kept"], dtype=pl.Float64)),
        "ches_dropped": summary(pl.Series(ches["dropped"], dtype=pl.Float64)),
        "ches_values": ches,
        "lengths": {c: summary(df[c]) for c in LENGTHS},
        "length_bias": bias_of_lengths(df.select(c="chosen_chars", r="rejected_chars")),
        "models_in_data": models,
        "annotators": sorted(set(df["annotator"].drop_nulls().to_list())),
        "languages": prompt_languages(df),
    }
