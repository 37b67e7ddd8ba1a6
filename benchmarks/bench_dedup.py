"""Near-duplicate detection: prefpipe's stage vs every library's fastest documented path, one run.

    .venv/bin/python benchmarks/bench_dedup.py [--docs 100000] [--rounds 3] [--sample 10000]
        [--methods NAME ...] [--out benchmarks/results/dedup.json]

Corpus (`build_corpus`): documents stitched from sentences of real prompts (AlpacaEval,
self-instruct, Auto-J, hh-rlhf harmless; internal benchmarking only, see
shared/data/real/README.md), already normalised (lower case, punctuation folded), lengths
log-normal (median 60 words, 8-400). 20 % of the documents are planted near duplicates of an
earlier document (itself possibly planted): word replacements, deletions and insertions whose
number is drawn for a target shingle Jaccard uniform in [0.5, 1.0), so the planted pairs straddle
the 0.8 threshold; each pair's exact Jaccard is recorded.

Every method gets the same normalised texts (as a Python list and as an Arrow array, prepared
untimed) and does its own tokenising and shingling inside the timed region: word 3-gram
shingles, 128 permutations, 16 bands x 8 rows, threshold 0.8. Methods run interleaved, in a
rotated order each round, in this one process (datasketch's sketching in 2 worker processes);
docs/s is reported as min and median over the rounds, with the median CPU seconds (all threads and
worker processes) per 100k documents, which depends less on what else loads the machine.

Truth: brute-force exact Jaccard of word 3-gram sets between every document of a random sample
and all documents (a sparse product over 64-bit shingle hashes). A keep-first method (drops
later copies, keeps the first) should flag a sampled document when an *earlier* document has
Jaccard >= 0.8 with it; a flag-both method (flags every member of a duplicate group) when *any*
other document has. Recall is measured against the method's own semantics; precision is the
share of its sampled flags that have some other document at Jaccard >= 0.8. Planted recall is
the share of planted pairs per exact-Jaccard bin whose later document is flagged (below the
threshold it is the rate of flags on pairs that are not duplicates).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
K, SHINGLE, THRESHOLD, BANDS, ROWS, SEED = 128, 3, 0.8, 16, 8, 1
BINS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0001]
_P = np.uint64(0x100000001B3)
_P2 = np.uint64((0x100000001B3 * 0x100000001B3) % (1 << 64))


# --------------------------------------------------------------------------- corpus

def real_prompts(with_benchmark_questions: bool = False) -> list[str]:
    """Distinct real prompts (first-seen order); Arena-Hard v2.0 questions only when asked."""
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
            texts.append(t[:t.rfind("\n\nAssistant:")].replace("\n\nHuman:", "\n").replace("\n\nAssistant:", "\n"))
    return list(dict.fromkeys(t for t in texts if len(t.split()) >= 3))


def sentence_pool(texts: list[str]) -> list[list[str]]:
    """Distinct normalised sentences (word lists) of the texts."""
    from pipeline.filters.normalize import normalize_texts

    parts = [s for t in texts for s in re.split(r"(?<=[.!?])\s+|\n+", t) if s.strip()]
    norm = normalize_texts(parts).to_pylist()
    return [s.split() for s in dict.fromkeys(n for n in norm if len(n.split()) >= 3)]


def shingle_set(words: list[str]) -> set[tuple[str, ...]]:
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass
class Corpus:
    texts: list[str]
    planted: list[tuple[int, int, float]]  # (document, its source, exact shingle Jaccard)


def build_corpus(n: int, seed: int = 0, dup_rate: float = 0.2, j_range: tuple[float, float] = (0.5, 1.0),
                 pool: list[list[str]] | None = None) -> Corpus:
    rng = random.Random(seed)
    pool = pool if pool is not None else sentence_pool(real_prompts())
    vocab = sorted({w for s in pool for w in s})
    docs: list[list[str]] = []
    planted = []
    for i in range(n):
        if i >= 100 and rng.random() < dup_rate:
            src = rng.randrange(i)
            words = list(docs[src])
            target = rng.uniform(*j_range)
            n_sh = max(1, len(words) - SHINGLE + 1)
            # a replacement away from other edits changes SHINGLE shingles: J = (n - 3e) / (n + 3e)
            edits = max(1, round(n_sh * (1 - target) / (SHINGLE * (1 + target))))
            for _ in range(edits):
                op, j = rng.random(), rng.randrange(len(words))
                if op < 0.5:
                    words[j] = rng.choice(vocab)
                elif op < 0.75 and len(words) > SHINGLE + 1:
                    del words[j]
                else:
                    words.insert(j, rng.choice(vocab))
            docs.append(words)
            planted.append((i, src, jaccard(shingle_set(words), shingle_set(docs[src]))))
        else:
            length = int(min(400, max(8, rng.lognormvariate(math.log(60), 0.7))))
            words = []
            while len(words) < length:
                words += rng.choice(pool)
            docs.append(words[:length])
    return Corpus([" ".join(w) for w in docs], planted)


# --------------------------------------------------------------------------- shingles and truth

def polars_shingle_hashes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes of every word 3-gram, uint64 row offsets) of single-spaced texts: words
    split and hashed by polars, combined into 3-grams in numpy (a text shorter than 3 words is
    one shingle). The input the prehashed library paths are fed."""
    import polars as pl

    words = pl.DataFrame({"t": pl.from_arrow(arr)}).with_row_index("d").select(
        "d", pl.col("t").str.split(" ").alias("w")).explode("w")
    h = words["w"].hash(seed=SEED).to_numpy()
    d = words["d"].to_numpy().astype(np.int64)
    n = len(arr)
    if len(h) >= SHINGLE:
        g = h[:-2] * _P2 + h[1:-1] * _P + h[2:]
        ok = d[2:] == d[:-2]
        g, gd = g[ok], d[:-2][ok]
    else:
        g, gd = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    counts = np.bincount(d, minlength=n)
    short = np.flatnonzero((counts > 0) & (counts < SHINGLE))
    if len(short):  # one shingle of all their words
        starts = np.r_[0, np.cumsum(counts)][short]
        extra = h[starts].copy()
        two = counts[short] == 2
        extra[two] = extra[two] * _P + h[starts[two] + 1]
        g, gd = np.concatenate([g, extra]), np.concatenate([gd, short])
        order = np.argsort(gd, kind="stable")
        g, gd = g[order], gd[order]
    offsets = np.zeros(n + 1, np.uint64)
    np.cumsum(np.bincount(gd, minlength=n), out=offsets[1:])
    return g, offsets


def brute_force_truth(arr: pa.Array, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each sampled document: (has an earlier document at J >= THRESHOLD, has any other
    one, its best J with an earlier document), by exact Jaccard of the shingle sets."""
    from scipy.sparse import csr_matrix

    g, offs = polars_shingle_hashes(arr)
    rows = np.repeat(np.arange(len(arr)), np.diff(offs).astype(np.int64))
    _, col = np.unique(g, return_inverse=True)
    a = csr_matrix((np.ones(len(g), np.int32), (rows, col.ravel())), shape=(len(arr), col.max() + 1))
    a.data[:] = 1  # duplicate (row, col) entries were summed: sets, not multisets
    a.sum_duplicates()
    a.data[:] = 1
    sizes = np.diff(a.indptr)
    earlier = np.zeros(len(sample), bool)
    anyone = np.zeros(len(sample), bool)
    best = np.zeros(len(sample))
    at = a.T.tocsr()
    for s in range(0, len(sample), 2000):
        part = sample[s:s + 2000]
        inter = (a[part] @ at).tocoo()
        i, j, x = inter.row, inter.col, inter.data
        jac = x / (sizes[part][i] + sizes[j] - x)
        me = part[i]
        hit = (jac >= THRESHOLD) & (j != me)
        earlier[s:s + 2000] = np.bincount(i[hit & (j < me)], minlength=len(part)) > 0
        anyone[s:s + 2000] = np.bincount(i[hit], minlength=len(part)) > 0
        e = (j < me)
        np.maximum.at(best[s:s + 2000], i[e], jac[e])
    return earlier, anyone, best


# --------------------------------------------------------------------------- methods

@dataclass
class Data:
    texts: list[str]
    arrow: pa.StringArray


def python_shingles(text: str) -> list[str]:
    w = text.split()
    if len(w) < SHINGLE:
        return [" ".join(w)] if w else []
    return [" ".join(w[i:i + SHINGLE]) for i in range(len(w) - SHINGLE + 1)]


def prefpipe_config(workers: int | None):
    from pipeline.filters.dedup import DedupConfig, NearDupConfig
    from pipeline.filters.normalize import NormalizeConfig

    # the texts are normalised already: every folding step off (the tokeniser still runs)
    off = NormalizeConfig(nfkc=False, casefold=False, fold_punctuation=False, strip_templates=False,
                          strip_wrappers=False)
    return DedupConfig(exact=False, normalize=off, workers=workers,
                       near=NearDupConfig(sketch="oph", num_perm=K, shingle_size=SHINGLE, threshold=THRESHOLD,
                                          bands=BANDS, rows=ROWS, seed=SEED))


def run_prefpipe(data: Data, workers: int | None = None) -> np.ndarray:
    """The stage's own path: `sketch_rows` (tokenise, shingle, one-permutation MinHash and the
    shingle sets, in batches on threads) + `resolve` (LSH, exact-Jaccard verification, clusters)."""
    from pipeline.filters.dedup import Sketch, resolve, sketch_rows

    cfg = prefpipe_config(workers)
    current = sketch_rows(data.arrow, cfg, [str(i) for i in range(len(data.arrow))])
    decisions = resolve(current, Sketch.concat([], K), cfg)
    flags = np.zeros(len(data.arrow), bool)
    flags[list(decisions.drops)] = True
    return flags


def run_rensa_flat(data: Data) -> np.ndarray:
    """polars word hashes -> numpy 3-gram hashes -> `RMinHash.digest_matrix_from_flat_token_hashes`
    -> `RMinHashLSH.insert_matrix_and_query_duplicate_flags`."""
    from rensa import RMinHash, RMinHashLSH

    g, offs = polars_shingle_hashes(data.arrow)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(g, offs, K, SEED)
    return np.asarray(RMinHashLSH(THRESHOLD, K, BANDS).insert_matrix_and_query_duplicate_flags(matrix), bool)


def run_rensa_token_sets(data: Data) -> np.ndarray:
    """Python shingle strings -> `RMinHash.digest_matrix_from_token_sets` ->
    `RMinHashLSH.insert_matrix_and_query_duplicate_flags`."""
    from rensa import RMinHash, RMinHashLSH

    matrix = RMinHash.digest_matrix_from_token_sets([python_shingles(t) for t in data.texts], K, SEED)
    return np.asarray(RMinHashLSH(THRESHOLD, K, BANDS).insert_matrix_and_query_duplicate_flags(matrix), bool)


def run_rensa_deduplicator(data: Data) -> np.ndarray:
    """`RMinHashDeduplicator(use_lsh=True).add_pairs` over (key, shingle strings): keeps the first,
    verifies candidates by estimated Jaccard."""
    from rensa import RMinHashDeduplicator

    dedup = RMinHashDeduplicator(THRESHOLD, K, True, BANDS, SEED)
    added = dedup.add_pairs([(str(i), python_shingles(t)) for i, t in enumerate(data.texts)])
    return ~np.asarray(added, bool)


def run_fastsketchlsh(data: Data) -> np.ndarray:
    """polars/numpy 3-gram hashes -> `FastSimilaritySketch.batch_csr(prehashed=True)` ->
    `LSH.insert_and_query_duplicates`, both on 2 threads."""
    import FastSketchLSH

    g, offs = polars_shingle_hashes(data.arrow)
    sketches = FastSketchLSH.FastSimilaritySketch(K, SEED).batch_csr(g, offs, prehashed=True, num_threads=2)
    lsh = FastSketchLSH.LSH(K, BANDS, num_threads=2)
    return np.asarray(lsh.insert_and_query_duplicates(sketches), bool)


def run_gaoya(data: Data) -> np.ndarray:
    """`MinHashStringIndex(analyzer='word', ngram_range=(3, 3))`: `par_bulk_insert_docs` then
    `par_bulk_query` (native threads; results verified by estimated Jaccard); a document is
    flagged when an earlier one is in its result (keep-first)."""
    import gaoya

    index = gaoya.minhash.MinHashStringIndex(hash_size=32, jaccard_threshold=THRESHOLD, num_bands=BANDS,
                                             band_size=ROWS, analyzer="word", lowercase=False,
                                             ngram_range=(SHINGLE, SHINGLE), id_container="smallvec")
    ids = list(range(len(data.texts)))
    index.par_bulk_insert_docs(ids, data.texts)
    found = index.par_bulk_query(data.texts)
    return np.array([any(j < i for j in hits) for i, hits in enumerate(found)], bool)


_DS_TEXTS: list[str] = []


def _datasketch_part(bounds: tuple[int, int]) -> np.ndarray:
    import xxhash
    from datasketch import MinHash

    start, end = bounds
    shingles = ([s.encode("utf-8") for s in python_shingles(t)] for t in _DS_TEXTS[start:end])
    return np.stack([m.hashvalues for m in MinHash.generator(shingles, num_perm=K, seed=SEED,
                                                            hashfunc=xxhash.xxh32_intdigest)])


def run_datasketch(data: Data, processes: int = 2, chunk: int = 2000) -> np.ndarray:
    """`MinHash.generator` with an xxhash `hashfunc` on `processes` worker processes (fork), the
    hash values sent back as arrays; `MinHashLSH.query` then `insert` per document (LeanMinHash)
    in this process as the parts arrive (keep-first, raw candidates)."""
    import multiprocessing

    from datasketch import LeanMinHash, MinHashLSH

    global _DS_TEXTS
    _DS_TEXTS = data.texts
    lsh = MinHashLSH(num_perm=K, params=(BANDS, ROWS))
    flags = np.zeros(len(data.texts), bool)
    bounds = [(s, min(s + chunk, len(data.texts))) for s in range(0, len(data.texts), chunk)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for (start, _), values in zip(bounds, pool.imap(_datasketch_part, bounds)):
            for r, hv in enumerate(values):
                m = LeanMinHash(seed=SEED, hashvalues=hv, scheme="affine32")
                key = start + r
                if lsh.query(m):
                    flags[key] = True
                lsh.insert(key, m)
    _DS_TEXTS = []
    return flags


METHODS = {
    # name: (function, semantics, candidates, threads)
    "prefpipe near-dup stage": (run_prefpipe, "keep-first", "verified: exact shingle Jaccard", "2 threads"),
    "prefpipe near-dup stage, 1 thread": (lambda d: run_prefpipe(d, 1), "keep-first",
                                          "verified: exact shingle Jaccard", "1 thread"),
    "rensa flat hashes (polars) + insert_matrix_and_query_duplicate_flags": (
        run_rensa_flat, "flag-both", "raw LSH candidates", "rensa: all cores; polars: 2 threads"),
    "rensa digest_matrix_from_token_sets + insert_matrix_and_query_duplicate_flags": (
        run_rensa_token_sets, "flag-both", "raw LSH candidates", "shingles: 1 thread; rensa: all cores"),
    "rensa RMinHashDeduplicator.add_pairs": (run_rensa_deduplicator, "keep-first",
                                             "verified: estimated Jaccard", "shingles: 1 thread"),
    "FastSketchLSH batch_csr (polars hashes) + insert_and_query_duplicates": (
        run_fastsketchlsh, "flag-both", "raw LSH candidates", "2 threads"),
    "gaoya MinHashStringIndex par_bulk_insert_docs + par_bulk_query": (
        run_gaoya, "keep-first", "verified: estimated Jaccard", "native threads"),
    "datasketch MinHash.generator + xxhash (2 processes) + MinHashLSH": (
        run_datasketch, "keep-first", "raw LSH candidates", "2 processes + 1 for the LSH"),
}
LIBRARY_MODULES = {"rensa": "rensa", "FastSketchLSH": "FastSketchLSH", "gaoya": "gaoya", "datasketch": "datasketch"}


def available(name: str) -> str | None:
    """None when the method can run, else why not."""
    for prefix, module in LIBRARY_MODULES.items():
        if name.startswith(prefix):
            try:
                __import__(module)
            except ImportError as e:
                return f"{module} not installed ({e}); `pip install -e .[bench]`"
    return None


# --------------------------------------------------------------------------- prefpipe breakdown

def prefpipe_breakdown(data: Data) -> dict[str, float]:
    """Seconds per step of the stage on one thread, over the whole corpus in one batch."""
    from pipeline.filters import minhash
    from pipeline.filters.normalize import normalize_texts, tokenize

    cfg = prefpipe_config(1)
    out = {}
    t = time.perf_counter()
    norm = normalize_texts(data.arrow, cfg.normalize, collapse_whitespace=False)
    out["normalise (all steps off)"] = time.perf_counter() - t
    t = time.perf_counter()
    tokens = tokenize(norm)
    out["tokenise (compiled: split + token hashes)"] = time.perf_counter() - t
    t = time.perf_counter()
    sig, has, sets = minhash.oph_sketch_sets(tokens, SHINGLE, K, SEED)
    out["shingle + OPH MinHash + shingle sets (compiled)"] = time.perf_counter() - t
    t = time.perf_counter()
    roots, counters = minhash.lsh_roots(sig, has, BANDS, ROWS, THRESHOLD, True, sets, np.ones(len(has), bool))
    out["LSH buckets + exact verification + union-find (compiled)"] = time.perf_counter() - t
    t = time.perf_counter()
    from pipeline.filters import kernels
    dup = np.flatnonzero(roots != np.arange(len(roots)))
    est = kernels.signature_agreement(sig, dup, roots[dup])
    _ = {g: ("near_duplicate", str(r), f'{{"jaccard_estimate": {round(e, 4)}}}')
         for g, r, e in zip(dup.tolist(), roots[dup].tolist(), est.tolist())}
    out["drop records (Python)"] = time.perf_counter() - t
    out.update({f"count: {k}": v for k, v in counters.items()})
    return out


# --------------------------------------------------------------------------- main

def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=10_000, help="documents checked by brute force")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=None, help="substrings of method names (default: all)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup.json")
    args = ap.parse_args()
    started = load()
    print(f"load at start: {started}")
    t = time.perf_counter()
    corpus = build_corpus(args.docs, args.seed)
    data = Data(corpus.texts, pa.array(corpus.texts, pa.string()))
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(data.texts), min(args.sample, len(data.texts)), replace=False))
    t = time.perf_counter()
    truth_earlier, truth_any, best_earlier = brute_force_truth(data.arrow, sample)
    truth_s = time.perf_counter() - t
    planted = np.array([(i, s, j) for i, s, j in corpus.planted])
    pj = planted[:, 2]
    words = [len(x.split()) for x in data.texts[:20000]]
    print(f"docs={len(data.texts)} (built in {build_s:.1f}s) mean_words={np.mean(words):.0f} "
          f"planted={len(planted)} planted_J>={THRESHOLD}={int((pj >= THRESHOLD).sum())} "
          f"planted_J_in_[0.75,0.85)={int(((pj >= 0.75) & (pj < 0.85)).sum())}")
    print(f"sample={len(sample)} true keep-first duplicates={int(truth_earlier.sum())} "
          f"flag-both={int(truth_any.sum())} (brute force {truth_s:.1f}s)")

    names = [n for n in METHODS if args.methods is None or any(m in n for m in args.methods)]
    skipped = {}
    for n in list(names):
        why = available(n)
        if why:
            print(f"skip {n}: {why}")
            skipped[n] = why
            names.remove(n)
    # warm-up on 2,000 documents: loads compiled kernels and library code once
    warm = Data(data.texts[:2000], data.arrow.slice(0, 2000))
    for n in names:
        METHODS[n][0](warm)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    flags: dict[str, np.ndarray] = {}
    loads = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        loads.append({"round": r, "before": os.getloadavg()})
        for n in order:
            gc.collect()
            c = cpu_seconds()
            t = time.perf_counter()
            f = METHODS[n][0](data)
            times[n].append(time.perf_counter() - t)
            cpu[n].append(cpu_seconds() - c)
            if n in flags and not np.array_equal(flags[n], f):
                print(f"  note: {n} flagged differently in round {r}")
            flags[n] = f
            print(f"  round {r} {n}: {len(data.texts) / times[n][-1]:,.0f} docs/s")
        loads[-1]["after"] = os.getloadavg()
    breakdown = prefpipe_breakdown(data) if any(n.startswith("prefpipe") for n in names) else {}

    results = {}
    for n in names:
        fn, semantics, candidates, threads = METHODS[n]
        f = flags[n]
        fs = f[sample]
        truth = truth_earlier if semantics == "keep-first" else truth_any
        recall = float((fs & truth).sum() / max(1, truth.sum()))
        precision = float((fs & truth_any).sum() / max(1, fs.sum()))
        later = f[planted[:, 0].astype(np.int64)]
        by_bin = {}
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            m = (pj >= lo) & (pj < hi)
            by_bin[f"[{lo:.2f},{min(hi, 1.0):.2f}{')' if hi < 1 else ']'}"] = (
                round(float(later[m].mean()), 4) if m.any() else None, int(m.sum()))
        rates = [len(data.texts) / s for s in times[n]]
        results[n] = {"semantics": semantics, "candidates": candidates, "threads": threads,
                      "docs_per_s_min": round(min(rates)), "docs_per_s_median": round(statistics.median(rates)),
                      "seconds": [round(s, 3) for s in times[n]],
                      "cpu_seconds_per_100k_docs_median": round(statistics.median(cpu[n]) * 1e5 / len(data.texts), 3),
                      "recall": round(recall, 4), "precision": round(precision, 4),
                      "flagged": int(f.sum()), "planted_flag_rate_by_jaccard": by_bin}
    libs = [n for n in names if not n.startswith("prefpipe")]
    fastest = max(libs, key=lambda n: results[n]["docs_per_s_median"]) if libs else None
    pref = "prefpipe near-dup stage"
    print()
    print(f"{'method':78s} {'min/s':>9s} {'median/s':>9s} {'cpu s/100k':>10s} {'recall':>7s} {'prec.':>6s}  "
          "semantics")
    for n in names:
        x = results[n]
        print(f"{n:78s} {x['docs_per_s_min']:9,d} {x['docs_per_s_median']:9,d} "
              f"{x['cpu_seconds_per_100k_docs_median']:10.2f} {x['recall']:7.3f} "
              f"{x['precision']:6.3f}  {x['semantics']}, {x['candidates']}")
    ratio = None
    if fastest and pref in results:
        mine, theirs = results[pref], results[fastest]
        ratio = {"fastest_library": fastest,
                 "median_over_median": round(mine["docs_per_s_median"] / theirs["docs_per_s_median"], 2),
                 "min_over_min": round(mine["docs_per_s_min"] / theirs["docs_per_s_min"], 2),
                 "cpu_per_doc_theirs_over_mine": round(theirs["cpu_seconds_per_100k_docs_median"]
                                                       / mine["cpu_seconds_per_100k_docs_median"], 2)}
        print(f"\nprefpipe / fastest library ({fastest}): {ratio['median_over_median']}x (medians), "
              f"{ratio['min_over_min']}x (mins); CPU seconds per document: theirs / prefpipe's "
              f"{ratio['cpu_per_doc_theirs_over_mine']}x")
    print("\nplanted pairs: share flagged by exact Jaccard bin (below 0.80: not duplicates)")
    print(f"{'method':78s} " + " ".join(f"{b:>13s}" for b in results[names[0]]["planted_flag_rate_by_jaccard"]))
    for n in names:
        print(f"{n:78s} " + " ".join(f"{'-' if v is None else f'{v:.3f}':>13s}"
                                     for v, _ in results[n]["planted_flag_rate_by_jaccard"].values()))
    if breakdown:
        print("\nprefpipe, where the time goes (1 thread, whole corpus in one batch):")
        for k, v in breakdown.items():
            print(f"  {k:60s} {v:10.3f}" if not k.startswith("count") else f"  {k:60s} {v:10d}")
    ended = load()
    print(f"\nload at end: {ended}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "benchmarks/bench_dedup.py " + " ".join(sys.argv[1:]),
        "uptime_start": started, "uptime_end": ended, "loadavg_per_round": loads, "cpus": os.cpu_count(),
        "docs": len(data.texts), "mean_words": round(float(np.mean(words)), 1), "rounds": args.rounds,
        "shingle": SHINGLE, "num_perm": K, "bands": BANDS, "rows": ROWS, "threshold": THRESHOLD,
        "planted": len(planted), "planted_j_ge_threshold": int((pj >= THRESHOLD).sum()),
        "sample": len(sample), "sample_true_keep_first": int(truth_earlier.sum()),
        "sample_true_flag_both": int(truth_any.sum()),
        "methods": results, "skipped": skipped, "prefpipe_over_fastest_library": ratio,
        "prefpipe_breakdown_s": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in breakdown.items()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
