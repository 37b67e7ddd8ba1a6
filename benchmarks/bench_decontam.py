"""Decontamination throughput against every shipped benchmark set (data/benchmarks.yaml).

    .venv/bin/python benchmarks/bench_decontam.py [--docs 200000] [--tier2-docs 2000]

Prompts: the real-prompt corpus of bench_dedup.py (pairs of real prompts, 20% light mutations).
Tier 1 (n-gram coverage) runs over all prompts, index build timed separately; tier 2 (MiniLM
embeddings + FAISS) over a subsample, since on CPU it is orders of magnitude slower.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_dedup import build_corpus  # noqa: E402

from pipeline.filters.decontam import (DecontamConfig, EmbeddingTier, build_benchmark_index,  # noqa: E402
                                       decontaminate_shards,
                                       embedding_hits, match_texts)
from pipeline.filters.parallel import MAX_DEFAULT_WORKERS  # noqa: E402


def map_batches_workers() -> int:
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--tier2-docs", type=int, default=2000)
    ap.add_argument("--tier2-sets", nargs="*", default=None,
                    help="only these registry sets in the tier-2 index (default: all; embedding all "
                         "32k items takes minutes on a CPU, and prompts/s hardly depends on it)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decontam.json")
    args = ap.parse_args()
    docs, _ = build_corpus(args.docs)
    config = DecontamConfig()
    result: dict = {"docs": len(docs), "cpus": os.cpu_count(), "threads": map_batches_workers()}
    start = time.perf_counter()
    index = build_benchmark_index(config)
    result.update(benchmark_items=len(index.items), benchmark_sets=len(index.per_benchmark()),
                  index_build_s=round(time.perf_counter() - start, 2))
    print(f"benchmark items={len(index.items)} sets={len(index.per_benchmark())} "
          f"index build {result['index_build_s']}s")
    corpora = {"realistic": build_corpus(args.docs, with_benchmark_questions=False)[0],
               "benchmark_heavy": docs}
    match_texts(pa.array(docs[:2000], pa.string()), index, config)  # warm-up: loads the compiled kernels
    for corpus, prompts in corpora.items():
        texts = pa.array(prompts, pa.string())
        for workers in (1, None):  # one thread (the baseline), then the stage's default
            cfg = config.model_copy(update={"workers": workers})
            start = time.perf_counter()
            flagged = sum(1 for h in match_texts(texts, index, cfg) if h)
            elapsed = time.perf_counter() - start
            label = "1 thread" if workers == 1 else f"{map_batches_workers()} threads"
            result[f"tier1_{corpus}_{'1_thread' if workers == 1 else 'default_threads'}"] = {
                "prompts_per_s": round(len(prompts) / elapsed), "seconds": round(elapsed, 2), "flagged": flagged}
            print(f"tier 1, {corpus} corpus, {label}: {len(prompts)} prompts in {elapsed:.1f}s = "
                  f"{len(prompts) / elapsed:.0f} prompts/s, flagged {flagged}")
    docs = corpora["realistic"]
    # the stage itself: Parquet shards in, kept shards + dropped rows + hits report out
    with tempfile.TemporaryDirectory() as work:
        shards = []
        for k, s in enumerate(range(0, len(docs), 50_000)):
            part = docs[s:s + 50_000]
            path = Path(work) / "in" / f"part-{k:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"id": [f"r{s + i}" for i in range(len(part))], "prompt": part}), path)
            shards.append(path)
        start = time.perf_counter()
        stats = decontaminate_shards(shards, Path(work) / "out", config, index)
        elapsed = time.perf_counter() - start
        result["stage_on_shards"] = {"prompts_per_s": round(len(docs) / elapsed), "seconds": round(elapsed, 2),
                                     "dropped": stats.rows_dropped, "kept": stats.rows_out}
        print(f"stage (Parquet in/out, drops written): {len(docs)} prompts in {elapsed:.1f}s = "
              f"{len(docs) / elapsed:.0f} prompts/s, dropped {stats.rows_dropped}")
    if args.tier2_docs:
        with tempfile.TemporaryDirectory() as cache:
            cfg2 = config.model_copy(update={"embedding": EmbeddingTier(enabled=True), "cache_dir": cache,
                                         "benchmarks": args.tier2_sets})
            start = time.perf_counter()
            index2 = build_benchmark_index(cfg2)
            embed_s = time.perf_counter() - start
            print(f"tier 2 index (embed {len(index2.items)} items, cached afterwards): {embed_s:.1f}s")
            sub = docs[:args.tier2_docs]
            start = time.perf_counter()
            hits = embedding_hits(sub, index2, cfg2)
            elapsed = time.perf_counter() - start
            result["tier2"] = {"benchmark_embedding_s": round(embed_s, 1), "items": len(index2.items),
                               "prompts": len(sub),
                               "prompts_per_s": round(len(sub) / elapsed), "flagged": sum(1 for h in hits if h)}
            print(f"tier 2: {len(sub)} prompts in {elapsed:.1f}s = {len(sub) / elapsed:.0f} prompts/s, "
                  f"flagged {result['tier2']['flagged']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
