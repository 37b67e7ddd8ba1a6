"""CHES filter (likelihood displacement, "Unintentional Unalignment", Razin et al.).

With h = final-layer hidden states of the model to be trained at the positions that predict each
response token, H+ = sum of h over the chosen response and H- over the rejected one:

    CHES            = <H+, H-> - ||H+||^2
    CHES normalised = <H+, H->/(|y+| |y-|) - ||H+||^2 / |y+|^2

High CHES marks pairs whose DPO training pushes the chosen response's likelihood *down*. Both are
stored in each pair's metadata (`ches`, `ches_normalized`, `ches_tokens_chosen/rejected`).

Two steps, so the top fraction is taken over the whole build, not per shard:
1. `ches_score_shard` scores one shard (any engine with HIDDEN_STATES; never drops);
2. `ches_cutoff` reads the scores of every shard and returns the (score, pair_id) key where the
   top fraction begins; `ches_shard` then drops `ches_top_fraction` / `ches_above_threshold`.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.engines.base import HIDDEN_STATES, Engine, ScoreRequest, require
from pipeline.engines.chat import message_tuples
from pipeline.filters.pair_filter import Decision, filter_pairs, metadata_of, response_text
from pipeline.progress import report
from pipeline.config import Strict
from pipeline.shards import DEFAULT_SHARD_ROWS, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR

STAGE = "ches"
SCORE_STAGE = "ches_score"
Key = tuple[float, str]
_UNSET = object()


DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # the embedded default (data/models.yaml)


class ChesConfig(Strict):
    model: str = Field(
        DEFAULT_MODEL, description="the model to be trained: a local model directory or a registry "
                                   "name (default: the embedded Qwen2.5-Coder-0.5B-Instruct)")
    dtype: Literal["float32", "bfloat16"] = "float32"
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    score: Literal["ches_normalized", "ches"] = Field(
        "ches_normalized", description="which CHES form ranks and thresholds the pairs")
    top_fraction: float | None = Field(
        0.05, ge=0, lt=1, description="drop this fraction of the build's pairs with the highest CHES")
    threshold: float | None = Field(None, description="drop pairs whose CHES is above this")
    requests_per_call: int = Field(
        32, ge=1, description="(prompt, response) forward passes handed to the engine per call")


def open_engine(config: ChesConfig) -> Engine:
    """The transformers engine on the model to be trained (the one engine that exposes hidden
    states)."""
    from pipeline.engines.registry import load_engine

    return load_engine(config.model, "transformers", dtype=config.dtype, batch_size=config.batch_size)


def ches(h_chosen: np.ndarray, h_rejected: np.ndarray) -> tuple[float, float | None]:
    """(CHES, length-normalised CHES) from per-token hidden states [T, hidden] of both responses.
    The normalised form is None when a response has no tokens."""
    return ches_from_sums(h_chosen.astype(np.float64).sum(0), len(h_chosen),
                          h_rejected.astype(np.float64).sum(0), len(h_rejected))


def ches_from_sums(h_plus: np.ndarray, n_plus: int, h_minus: np.ndarray, n_minus: int
                   ) -> tuple[float, float | None]:
    cross, own = float(h_plus @ h_minus), float(h_plus @ h_plus)
    normalized = (cross / (n_plus * n_minus) - own / n_plus ** 2) if n_plus and n_minus else None
    return cross - own, normalized


def _request(prompt: list[dict], messages: list[dict]) -> ScoreRequest:
    return ScoreRequest(prompt=message_tuples(prompt),
                        response=response_text(messages))


def summed_hidden_states(engine: Engine, requests: list[ScoreRequest], per_call: int = 32
                         ) -> dict[ScoreRequest, tuple[np.ndarray, int]]:
    """(sum of response hidden states, number of response tokens) per distinct request; each
    distinct (prompt, response) runs once, in length order so batches pad little."""
    unique = sorted(set(requests), key=lambda r: (sum(len(c) for _, c in r.prompt) + len(r.response)))
    sums: dict[ScoreRequest, tuple[np.ndarray, int]] = {}
    for k in range(0, len(unique), per_call):
        chunk = unique[k: k + per_call]
        for req, states in zip(chunk, engine.hidden_states(chunk)):
            sums[req] = (np.asarray(states, dtype=np.float64).sum(0), len(states))
    return sums


def ches_score_shard(in_shard: Path, out_dir: Path, config: ChesConfig, engine: Engine,
                     shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
    """Score every pair of one shard; writes `part-*.parquet` with CHES in the metadata."""
    require(engine.model_id, engine.capabilities, {HIDDEN_STATES})
    rows = list(iter_rows(in_shard))
    pairs = [(_request(r["prompt"], r["chosen"]), _request(r["prompt"], r["rejected"])) for r in rows]
    sums = summed_hidden_states(engine, [q for p in pairs for q in p], config.requests_per_call)
    stats = StageStats(SCORE_STAGE)
    with ShardWriter(out_dir, PAIR, shard_rows=shard_rows) as out:
        for row, (chosen, rejected) in zip(rows, pairs):
            (h_plus, n_plus), (h_minus, n_minus) = sums[chosen], sums[rejected]
            raw, normalized = ches_from_sums(h_plus, n_plus, h_minus, n_minus)
            meta = metadata_of(row)
            meta.update(ches=raw, ches_normalized=normalized, ches_tokens_chosen=n_plus,
                        ches_tokens_rejected=n_minus, ches_model=engine.model_id)
            out.write({**row, "metadata": json.dumps(meta, sort_keys=True)})
            stats.keep()
    report(SCORE_STAGE, stats.rows_in)
    return stats.check()


def _score(meta: dict, config: ChesConfig) -> float | None:
    value = meta.get(config.score)
    return None if value is None else float(value)


def _keys(shards: list[Path], config: ChesConfig) -> Iterator[Key]:
    for row in iter_rows(shards, columns=["pair_id", "metadata"]):
        score = _score(metadata_of(row), config)
        if score is not None:
            yield (score, row["pair_id"])


def ches_cutoff(scored_shards: list[Path], config: ChesConfig) -> Key | None:
    """The smallest (score, pair_id) key of the top `top_fraction` over all scored shards (pairs
    at or above it are dropped); None when the fraction removes nothing."""
    if not config.top_fraction:
        return None
    total = sum(1 for _ in _keys(scored_shards, config))
    k = math.floor(config.top_fraction * total)
    if k == 0:
        return None
    return heapq.nlargest(k, _keys(scored_shards, config))[-1]


def ches_shard(in_shard: Path, out_dir: Path, config: ChesConfig, cutoff: Key | None = _UNSET,
               shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
    """Drop scored pairs above the threshold (`ches_above_threshold`), in the build's top
    fraction (`ches_top_fraction`), or without a score (`ches_undefined`: an empty response)."""
    if config.top_fraction and cutoff is _UNSET:
        raise ValueError("a CHES top fraction needs the build-wide cutoff: call ches_cutoff first")

    def decide(row: dict, meta: dict) -> Decision:
        if config.score not in meta:
            raise ValueError(f"pair {row['pair_id']} has no CHES score: run ches_score_shard first")
        score = _score(meta, config)
        if score is None:
            return "ches_undefined", "a response has no tokens", {}
        if config.threshold is not None and score > config.threshold:
            return "ches_above_threshold", f"{config.score} {score:g} > {config.threshold:g}", {}
        if cutoff not in (None, _UNSET) and (score, row["pair_id"]) >= cutoff:
            return ("ches_top_fraction",
                    f"{config.score} {score:g} in the top {config.top_fraction:g} "
                    f"(cutoff {cutoff[0]:g})", {})
        return None, "", {}

    return filter_pairs(in_shard, out_dir, STAGE, decide, shard_rows)


def ches_build(in_shards: list[Path], out_root: Path, config: ChesConfig, engine: Engine,
               shard_rows: int = DEFAULT_SHARD_ROWS) -> tuple[StageStats, list[StageStats]]:
    """Both steps over a whole build: scores into `out_root/scored/NNNNN`, filtered pairs into
    `out_root/kept/NNNNN`. Returns (scoring stats, per-shard filter stats)."""
    score_stats, scored = StageStats(SCORE_STAGE), []
    for i, shard in enumerate(in_shards):
        directory = Path(out_root) / "scored" / f"{i:05d}"
        score_stats += ches_score_shard(shard, directory, config, engine, shard_rows)
        scored += sorted(directory.glob("part-*.parquet"))
    cutoff = ches_cutoff(scored, config)
    return score_stats.check(), [ches_shard(s, Path(out_root) / "kept" / f"{i:05d}", config, cutoff,
                                            shard_rows) for i, s in enumerate(scored)]
