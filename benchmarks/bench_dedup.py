"""Near-duplicate throughput and recall: prefpipe vs plain datasketch vs rensa, same run, same data.

    .venv/bin/python benchmarks/bench_dedup.py [--docs 200000] [--datasketch-docs 4000]

Corpus: real prompts (AlpacaEval, self-instruct, Auto-J, Arena-Hard, hh-rlhf) combined in random
pairs into distinct documents; 20% of the documents are light mutations (1-3 word edits) of an
earlier document (the planted near duplicates). Every method starts from the same normalised texts
(normalisation is shared and not timed) and uses word 3-gram shingles, 128 permutations and the
same threshold. Recall = planted duplicates with true shingle Jaccard >= threshold that a method
flags. Plain datasketch is timed on the first `--datasketch-docs` documents and its docs/s
extrapolated (it is ~1000x too slow for the whole set).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from pipeline.filters.dedup import DedupConfig, NearDupConfig, Sketch, resolve, sketch_all  # noqa: E402
from pipeline.filters.normalize import NormalizeConfig, normalize_texts  # noqa: E402
from pipeline.filters.parallel import MAX_DEFAULT_WORKERS  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
K, SHINGLE, THRESHOLD = 128, 3, 0.8
BANDS, ROWS = 16, 8  # rensa needs bands | num_perm; all methods use the same banding


def real_prompts(with_benchmark_questions: bool = True) -> list[str]:
    p = REAL / "prompts"
    texts = [r["instruction"] for r in json.loads((p / "alpaca_eval_text-davinci-003_outputs.json").read_text())]
    texts += [json.loads(x)["instruction"] for x in (p / "self-instruct_user_oriented_instructions.jsonl").open()]
    with gzip.open(REAL / "preference/autoj_testdata_pairwise.jsonl.gz", "rt") as f:
        texts += [json.loads(x)["prompt"] for x in f]
    if with_benchmark_questions:  # Arena-Hard v2.0 is a benchmark test set
        texts += [json.loads(x)["prompt"] for x in (REAL / "benchmarks/arena-hard-v2.0_question.jsonl").open()]
    with gzip.open(REAL / "preference/hh-rlhf_harmless-base_test.jsonl.gz", "rt") as f:
        for x in f:
            t = json.loads(x)["chosen"]
            texts.append(t[:t.rfind("\n\nAssistant:")])
    return list(dict.fromkeys(t for t in texts if len(t.split()) >= 5))


def build_corpus(n: int, seed: int = 0, with_benchmark_questions: bool = True
                 ) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(seed)
    base = real_prompts(with_benchmark_questions)
    docs, planted = [], []
    for i in range(n):
        if i > 100 and rng.random() < 0.2:
            src = rng.randrange(i)
            words = docs[src].split()
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(len(words))
                words[j] = words[j][::-1] if rng.random() < 0.5 else words[j] + "s"
            docs.append(" ".join(words))
            planted.append((i, src))
        else:
            a, b = rng.sample(base, 2)
            docs.append(a[:600] + "\n" + b[:600])
    return docs, planted


def shingles(text: str) -> list[str]:
    w = text.split()
    return [" ".join(w[i:i + SHINGLE]) for i in range(max(1, len(w) - SHINGLE + 1))]


def true_jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def run_prefpipe(norm: list[str], sketch: str, workers: int | None) -> tuple[float, set[int]]:
    # the texts are normalised already: every folding step off (the tokeniser still runs)
    off = NormalizeConfig(nfkc=False, casefold=False, fold_punctuation=False, strip_templates=False,
                          strip_wrappers=False)
    cfg = DedupConfig(exact=False, normalize=off, workers=workers,
                      near=NearDupConfig(sketch=sketch, num_perm=K, shingle_size=SHINGLE,
                                         threshold=THRESHOLD, bands=BANDS, rows=ROWS))
    start = time.perf_counter()
    _, sig, has = sketch_all(pa.array(norm, pa.string()), cfg)
    current = Sketch([str(i) for i in range(len(norm))], np.zeros(len(norm), np.uint64), sig, has)
    decisions = resolve(current, Sketch.concat([], K), cfg)
    elapsed = time.perf_counter() - start
    return len(norm) / elapsed, set(decisions.drops)


def run_datasketch(norm: list[str], bands: int, rows: int) -> tuple[float, set[int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=K, params=(bands, rows))
    flagged = set()
    start = time.perf_counter()
    for i, text in enumerate(norm):
        m = MinHash(num_perm=K, seed=1)
        for s in shingles(text):
            m.update(s.encode("utf-8"))
        if lsh.query(m):
            flagged.add(i)
        lsh.insert(i, m)
    return len(norm) / (time.perf_counter() - start), flagged


def run_rensa(norm: list[str], bands: int) -> tuple[float, set[int]]:
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(THRESHOLD, K, bands)
    flagged = set()
    start = time.perf_counter()
    for i, text in enumerate(norm):
        m = RMinHash(K, 1)
        m.update(shingles(text))
        if lsh.query(m):
            flagged.add(i)
        lsh.insert(i, m)
    return len(norm) / (time.perf_counter() - start), flagged


def recall(flagged: set[int], truth: list[int]) -> float:
    return sum(i in flagged for i in truth) / max(1, len(truth))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--datasketch-docs", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup.json")
    args = ap.parse_args()
    docs, planted = build_corpus(args.docs)
    norm = normalize_texts(docs).to_pylist()
    truth = [i for i, src in planted if true_jaccard(norm[i], norm[src]) >= THRESHOLD]
    bands, rows = BANDS, ROWS
    print(f"docs={len(norm)} planted={len(planted)} planted_with_J>={THRESHOLD}={len(truth)} "
          f"mean_tokens={np.mean([len(t.split()) for t in norm[:20000]]):.0f} bands={bands} rows={rows}")
    results = {}
    threads = min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)
    for sketch, workers in (("oph", None), ("oph", 1), ("kperm", None)):
        run_prefpipe(norm[:2000], sketch, workers)  # warm-up: loads the compiled kernels once
        rate, flagged = run_prefpipe(norm, sketch, workers)
        label = f"{workers or threads} thread{'s' if (workers or threads) > 1 else ''}"
        results[f"prefpipe-{sketch} ({label})"] = (rate, recall(flagged, truth), len(norm))
    rate, flagged = run_rensa(norm, bands)
    results["rensa (RMinHash + RMinHashLSH loop)"] = (rate, recall(flagged, truth), len(norm))
    sub = norm[:args.datasketch_docs]
    rate, flagged = run_datasketch(sub, bands, rows)
    sub_truth = [i for i in truth if i < len(sub)]
    results["datasketch (MinHash + MinHashLSH loop, subsample)"] = (rate, recall(flagged, sub_truth), len(sub))
    base_ds = results["datasketch (MinHash + MinHashLSH loop, subsample)"][0]
    base_rensa = results["rensa (RMinHash + RMinHashLSH loop)"][0]
    print(f"{'method':55s} {'docs':>8s} {'docs/s':>10s} {'x datasketch':>13s} {'x rensa':>8s} {'recall':>7s}")
    for name, (rate, rec, n) in results.items():
        print(f"{name:55s} {n:8d} {rate:10.0f} {rate / base_ds:13.1f} {rate / base_rensa:8.2f} {rec:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "docs": len(norm), "planted_with_j_ge_threshold": len(truth), "bands": bands, "rows": rows,
        "cpus": os.cpu_count(),
        "methods": {name: {"docs": n, "docs_per_s": round(rate), "x_datasketch": round(rate / base_ds, 2),
                           "x_rensa": round(rate / base_rensa, 2), "recall": round(rec, 4)}
                    for name, (rate, rec, n) in results.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
