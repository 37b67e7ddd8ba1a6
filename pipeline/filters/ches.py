"""CHES filter (likelihood displacement, "Unintentional Unalignment", Razin et al.).

With h = final-layer hidden states of the model to be trained at the positions that predict each
response token, H+ = sum of h over the chosen response and H- over the rejected one:

    CHES            = <H+, H-> - ||H+||^2
    CHES normalised = <H+, H->/(|y+| |y-|) - ||H+||^2 / |y+|^2

High CHES marks pairs whose DPO training pushes the chosen response's likelihood *down*. Both are
stored in each pair's metadata (`ches`, `ches_normalized`, `ches_tokens_chosen/rejected`).

Two steps, so the top fraction is taken over the whole build, not per shard:
1. `ches_score_shard` scores one shard (any engine with HIDDEN_STATES; never drops);
2. `ChesCut` (a `BuildCut`) ranks the scores of every shard and drops `ches_top_fraction` /
   `ches_above_threshold` / `ches_undefined`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.engines.base import HIDDEN_STATES, Engine, ScoreRequest, require
from pipeline.engines.chat import message_tuples
from pipeline.filters.pair_filter import BuildCut, Drop, metadata_of, response_text
from pipeline.progress import report
from pipeline.config import Strict
from pipeline.shards import DEFAULT_SHARD_ROWS, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR

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


def engine_spec(config: ChesConfig) -> tuple[str, str, dict]:
    """(model, engine kind, options): the transformers engine on the model to be trained (the one
    engine that exposes hidden states)."""
    return config.model, "transformers", {"dtype": config.dtype, "batch_size": config.batch_size}


def open_engine(config: ChesConfig) -> Engine:
    from pipeline.engines.registry import load_engine

    model, kind, options = engine_spec(config)
    return load_engine(model, kind, **options)


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


def ches_score_shard(in_shard: Path, out_dir: Path, config: ChesConfig, engine: Engine, stage: str,
                     shard_rows: int = DEFAULT_SHARD_ROWS) -> StageStats:
    """Score every pair of one shard; writes `part-*.parquet` with CHES in the metadata."""
    require(engine.model_id, engine.capabilities, {HIDDEN_STATES})
    rows = list(iter_rows(in_shard))
    pairs = [(_request(r["prompt"], r["chosen"]), _request(r["prompt"], r["rejected"])) for r in rows]
    sums = summed_hidden_states(engine, [q for p in pairs for q in p], config.requests_per_call)
    stats = StageStats(f"{stage} scoring")
    with ShardWriter(out_dir, PAIR, shard_rows=shard_rows) as out:
        for row, (chosen, rejected) in zip(rows, pairs):
            (h_plus, n_plus), (h_minus, n_minus) = sums[chosen], sums[rejected]
            raw, normalized = ches_from_sums(h_plus, n_plus, h_minus, n_minus)
            meta = metadata_of(row)
            meta.update(ches=raw, ches_normalized=normalized, ches_tokens_chosen=n_plus,
                        ches_tokens_rejected=n_minus, ches_model=engine.model_id)
            out.write({**row, "metadata": json.dumps(meta, sort_keys=True)})
            stats.keep()
    report(stats.stage, stats.rows_in)
    return stats.check()


class ChesCut(BuildCut):
    """Drop scored pairs above the threshold (`ches_above_threshold`), in the build's top
    fraction (`ches_top_fraction`), or without a score (`ches_undefined`: an empty response)."""

    config: ChesConfig
    cut_reason = "ches_top_fraction"

    @property
    def cuts(self) -> bool:
        return bool(self.config.top_fraction)

    def key(self, row: dict, meta: dict) -> float | None:
        value = meta.get(self.config.score)
        return None if value is None else float(value)

    def rule(self, row: dict, meta: dict) -> Drop | None:
        score_name = self.config.score
        if score_name not in meta:
            raise ValueError(f"pair {row['pair_id']} has no CHES score: run ches_score_shard first")
        score = self.key(row, meta)
        if score is None:
            return Drop("ches_undefined", "a response has no tokens")
        if self.config.threshold is not None and score > self.config.threshold:
            return Drop("ches_above_threshold", f"{score_name} {score:g} > {self.config.threshold:g}")
        return None

    def keep(self, ranked: int) -> int | None:
        dropped = math.floor(self.config.top_fraction * ranked)
        return ranked - dropped if dropped else None

    def cut_detail(self, value: float, cutoff) -> str:
        return (f"{self.config.score} {value:g} in the top {self.config.top_fraction:g} "
                f"(the largest kept is {cutoff[0]:g})")


def ches_build(in_shards: list[Path], out_root: Path, config: ChesConfig, engine: Engine, stage: str,
               shard_rows: int = DEFAULT_SHARD_ROWS) -> tuple[StageStats, list[StageStats]]:
    """Both steps over a whole build: scores into `out_root/scored/NNNNN`, filtered pairs into
    `out_root/kept/NNNNN`. Returns (scoring stats, per-shard filter stats)."""
    score_stats, scored = StageStats(f"{stage} scoring"), []
    for i, shard in enumerate(in_shards):
        directory = Path(out_root) / "scored" / f"{i:05d}"
        score_stats += ches_score_shard(shard, directory, config, engine, stage, shard_rows)
        scored += sorted(directory.glob("part-*.parquet"))
    return score_stats.check(), ChesCut(config, stage).filter_build(scored, Path(out_root) / "kept", shard_rows)
