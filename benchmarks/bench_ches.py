"""CHES over the real hh-rlhf harmless test pairs with the embedded model (the re-curation run).

Ingests the 2,312 rows, builds the source pairs, then runs both CHES steps (score every shard,
cut the build's top fraction) with the transformers engine on the model to be trained. Before the
full run, a baseline on the first `--baseline` pairs compares prefpipe's path (distinct requests
only, length-sorted, batched, each prompt run once for both responses) with the naive one (one
unbatched forward pass per response, in pair order) and with the same batches without prompt
sharing, in the same process: reports the ratios and checks the scores agree.

    PREFPIPE_CACHE_DIR=... .venv/bin/python benchmarks/bench_ches.py \\
        --out benchmarks/results/ches.json [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "real" / "preference" / "hh-rlhf_harmless-base_test.jsonl.gz"


def naive_vs_batched(engine, requests, config) -> dict:
    """One unbatched forward pass per response (pair order) vs the stage's batched path."""
    from pipeline.filters.ches import ches_from_sums, summed_hidden_states

    t0 = time.perf_counter()
    naive = [engine.hidden_states([r])[0] for r in requests]
    naive_s = time.perf_counter() - t0
    shared = getattr(engine, "share_prompts", False)
    full_s = None
    if shared:  # the same batched path without the shared prompt cache
        engine.share_prompts = False
        t0 = time.perf_counter()
        summed_hidden_states(engine, requests, config.requests_per_call)
        full_s = time.perf_counter() - t0
        engine.share_prompts = True
    t0 = time.perf_counter()
    sums = summed_hidden_states(engine, requests, config.requests_per_call)
    batched_s = time.perf_counter() - t0
    max_rel = 0.0
    for k in range(0, len(requests), 2):
        ref = ches_from_sums(naive[k].astype(np.float64).sum(0), len(naive[k]),
                             naive[k + 1].astype(np.float64).sum(0), len(naive[k + 1]))[0]
        got = ches_from_sums(*sums[requests[k]], *sums[requests[k + 1]])[0]
        max_rel = max(max_rel, abs(got - ref) / max(abs(ref), 1e-9))
    return {"naive_s": round(naive_s, 2), "batched_s": round(batched_s, 2),
            "speedup": round(naive_s / batched_s, 2), "max_rel_diff": max_rel,
            "batched_without_prompt_sharing_s": None if full_s is None else round(full_s, 2),
            "prompt_sharing_speedup": None if full_s is None else round(full_s / batched_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="registry name, model dir, or `tiny`")
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--limit", type=int, default=None, help="only the first N input rows")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--top-fraction", type=float, default=0.05)
    ap.add_argument("--baseline", type=int, default=16, help="pairs in the naive-vs-batched check")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ches.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from pipeline.engines.base import ScoreRequest
    from pipeline.filters.ches import ChesConfig, ChesCut, ches_score_shard, open_engine
    from pipeline.ingest import ingest_input
    from pipeline.pairs import source_pairs
    from pipeline.recipe import IngestConfig, InputSpec
    from pipeline.shards import iter_rows, list_shards
    from pipeline.stats import StageStats

    work = Path(tempfile.mkdtemp(prefix="bench-ches-"))
    t0 = time.perf_counter()
    ingest = ingest_input(InputSpec(path=str(args.data), format="hh_rlhf", max_rows=args.limit),
                          IngestConfig(shard_rows=1000), work / "conv", stage="ingest")
    pair_stats, pair_shards = StageStats("pairs"), []
    for i, shard in enumerate(list_shards(work / "conv")):
        pair_stats += source_pairs(shard, work / "pairs" / f"{i:05d}", stage="pairs")
        pair_shards += list_shards(work / "pairs" / f"{i:05d}")
    prep_s = time.perf_counter() - t0

    label = args.model
    if args.model == "tiny":  # the tiny random Llama: the pipeline's own cost, not the model's
        from pipeline.engines.tiny import build_tiny_model

        args.model = str(build_tiny_model(work / "tiny-model"))
    config = ChesConfig(model=args.model, dtype=args.dtype, batch_size=args.batch_size,
                        top_fraction=args.top_fraction)
    t0 = time.perf_counter()
    engine = open_engine(config)
    load_s = time.perf_counter() - t0

    # baseline: naive per-response forward passes vs the stage's batched path, same pairs
    sample = list(iter_rows(pair_shards))[: args.baseline]

    def req(p, side):
        return ScoreRequest(tuple((m["role"], m["content"]) for m in p["prompt"]), p[side][0]["content"])

    requests = [req(p, s) for p in sample for s in ("chosen", "rejected")]
    baseline = None
    if requests:
        baseline = naive_vs_batched(engine, requests, config)
        baseline["pairs"] = len(sample)

    # the full run: score every shard, then cut the build's top fraction
    t0 = time.perf_counter()
    scored, score_stats = [], StageStats("ches scoring")
    for i, shard in enumerate(pair_shards):
        directory = work / "scored" / f"{i:05d}"
        score_stats += ches_score_shard(shard, directory, config, engine, "ches")
        scored += list_shards(directory)
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cut = ChesCut(config, "ches")
    filter_stats = StageStats.total("ches", cut.filter_build(scored, work / "kept"))
    cutoff = cut.cutoff
    cut_s = time.perf_counter() - t0

    rows = list(iter_rows(scored, columns=["metadata"]))
    meta = [json.loads(r["metadata"]) for r in rows]
    tokens = sum(m["ches_tokens_chosen"] + m["ches_tokens_rejected"] for m in meta)
    norm = np.array([m["ches_normalized"] for m in meta if m["ches_normalized"] is not None])
    result = {
        "model": label, "dtype": args.dtype, "batch_size": args.batch_size,
        "input_rows": ingest.rows_in, "ingest_dropped": ingest.rows_dropped,
        "pairs": pair_stats.outputs_written, "pairs_dropped": dict(pair_stats.reasons),
        "pairs_scored": score_stats.rows_out, "response_tokens": tokens,
        "prep_s": round(prep_s, 1), "model_load_s": round(load_s, 1),
        "score_s": round(score_s, 1), "cut_s": round(cut_s, 2),
        "pairs_per_s": round(score_stats.rows_out / score_s, 2),
        "kept": filter_stats.rows_out, "dropped": dict(filter_stats.reasons),
        "ches_normalized_quantiles": {q: float(np.quantile(norm, q)) for q in (0.05, 0.5, 0.95)},
        "cutoff": None if cutoff is None else cutoff[0],  # the largest score kept
        "baseline": baseline,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
