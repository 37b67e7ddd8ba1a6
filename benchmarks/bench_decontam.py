"""Decontamination throughput against every shipped benchmark set (data/benchmarks.yaml).

    .venv/bin/python benchmarks/bench_decontam.py [--docs 200000] [--tier2-docs 2000]

Prompts: the real-prompt corpus of bench_dedup.py (pairs of real prompts, 20% light mutations).
Tier 1 (n-gram coverage) runs over all prompts, index build timed separately; tier 2 (MiniLM
embeddings + FAISS) over a subsample, since on CPU it is orders of magnitude slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
from bench_dedup import build_corpus  # noqa: E402

from pipeline.filters.decontam import (DecontamConfig, EmbeddingTier, build_benchmark_index,  # noqa: E402
                                       embedding_hits, match_texts)
from pipeline.filters.parallel import MAX_DEFAULT_WORKERS  # noqa: E402


def map_batches_workers() -> int:
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--tier2-docs", type=int, default=2000)
    args = ap.parse_args()
    docs, _ = build_corpus(args.docs)
    config = DecontamConfig()
    start = time.perf_counter()
    index = build_benchmark_index(config)
    print(f"benchmark items={len(index.items)} sets={len(index.per_benchmark())} "
          f"index build {time.perf_counter() - start:.1f}s")
    texts = pa.array(docs, pa.string())
    for workers in (1, None):  # one thread (the baseline), then the stage's default
        cfg = config.model_copy(update={"workers": workers})
        start = time.perf_counter()
        flagged = sum(1 for h in match_texts(texts, index, cfg) if h)
        elapsed = time.perf_counter() - start
        label = "1 thread" if workers == 1 else f"{map_batches_workers()} threads"
        print(f"tier 1, {label}: {len(docs)} prompts in {elapsed:.1f}s = {len(docs) / elapsed:.0f} prompts/s, "
              f"flagged {flagged}")
    if not args.tier2_docs:
        return
    with tempfile.TemporaryDirectory() as cache:
        cfg2 = config.model_copy(update={"embedding": EmbeddingTier(enabled=True), "cache_dir": cache})
        start = time.perf_counter()
        index2 = build_benchmark_index(cfg2)
        print(f"tier 2 index (embed {len(index2.items)} items, cached afterwards): {time.perf_counter() - start:.1f}s")
        sub = docs[:args.tier2_docs]
        start = time.perf_counter()
        hits = embedding_hits(sub, index2, cfg2)
        elapsed = time.perf_counter() - start
        print(f"tier 2: {len(sub)} prompts in {elapsed:.1f}s = {len(sub) / elapsed:.0f} prompts/s, "
              f"flagged {sum(1 for h in hits if h)}")


if __name__ == "__main__":
    main()
