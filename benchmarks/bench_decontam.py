"""Decontamination: prefpipe's tier 1 vs plain n-gram set lookups and Aho-Corasick, one run.

    .venv/bin/python benchmarks/bench_decontam.py [--docs 100000] [--rounds 3] [--per-benchmark 25]
        [--stage] [--tier2-docs 0] [--out benchmarks/results/decontam.json]

Benchmarks: every set in data/benchmarks.yaml (40 sets). Prompts:

- clean: `--docs` prompts stitched from raw sentences of real prompts (AlpacaEval, self-instruct,
  Auto-J, hh-rlhf harmless; internal benchmarking only, see shared/data/real/README.md), taken only
  from source prompts that share no word 8-gram with any benchmark item and hold no whole item of
  6-7 words (so AlpacaEval's Vicuna questions and Auto-J's MT-Bench questions are left out),
  lengths log-normal (median 60 words): truly clean prompts. The false-positive rate is the share
  of these that a method flags (a flag can only come from words stitched across sentences).
- planted: up to `--per-benchmark` items of >= 20 tokens from every set, each in six forms:
  verbatim, re-cased/re-spaced, wrapped in an instruction, re-wrapped into 3-word lines, two words
  changed, first half only; and up to `--per-benchmark` short items (6-19 tokens) per set, verbatim,
  re-cased/re-spaced, wrapped and re-wrapped (two changed words or half of such an item leave no
  8-gram). Inserted at random positions among the clean prompts.

Methods (all get the raw prompts; each normalises and tokenises inside its timed region; indexes,
sets and automata are built once, untimed, and their build time is reported):

- prefpipe tier 1 (`match_texts`: n-gram coverage of items, 8- and 13-grams plus 6/7-token
  tables for short items, 2 threads; and on 1 thread);
- set lookup: lower-case, every non-word character to a space, split; a prompt is flagged when
  any of its 8-grams (13-grams) is one of the benchmark items' 8-grams (13-grams); 2 processes;
- Aho-Corasick (ahocorasick-rs): the same normalisation, patterns = every item of >= 6 tokens
  padded with spaces (whole words), flagged on any match; 2 processes.

Reported: prompts/s (min and median over interleaved rounds, with the median CPU seconds of all
threads and worker processes per 100k prompts), rows flagged, recall per form, false-positive
rate on the clean prompts, and the overlap of the flagged sets with prefpipe's.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_dedup import real_prompts  # noqa: E402

from pipeline.filters.decontam import (DecontamConfig, EmbeddingTier, build_benchmark_index,  # noqa: E402
                                       decontaminate_shards, embedding_hits, match_texts)

WRAP = ("You are a helpful tutor. Please answer the following question carefully.\n\n{}\n\n"
        "Explain your reasoning step by step and give the final answer at the end.")
LONG_FORMS = ["verbatim", "recased_respaced", "wrapped", "short_lines", "few_words_changed", "first_half"]
SHORT_FORMS = ["verbatim", "recased_respaced", "wrapped", "short_lines"]
_NONWORD = re.compile(r"[\W_]+")


def simple_tokens(text: str) -> list[str]:
    """The baselines' normalisation: lower case, every non-word character (Unicode) a space."""
    return _NONWORD.sub(" ", text.lower()).split()


def grams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


# --------------------------------------------------------------------------- prompts

def forms(text: str, rng: random.Random, vocab: list[str], long: bool) -> dict[str, str]:
    words = text.split()
    out = {
        "verbatim": text,
        "recased_respaced": "   ".join(w.upper() if i % 2 else w.lower() for i, w in enumerate(words)),
        "wrapped": WRAP.format(text),
        "short_lines": "\n".join(" ".join(words[i:i + 3]) for i in range(0, len(words), 3)),
    }
    if long:
        changed = list(words)
        for i in rng.sample(range(len(words)), 2):
            changed[i] = rng.choice(vocab)
        out["few_words_changed"] = " ".join(changed)
        out["first_half"] = " ".join(words[:len(words) // 2])
    return out


def overlaps(text: str, bench_grams: set[str], short_items: set[str]) -> bool:
    """Shares a word 8-gram with a benchmark item, or holds a whole item of 6-7 words."""
    toks = simple_tokens(text)
    return any(g in bench_grams for g in grams(toks, 8)) or any(
        g in short_items for k in (6, 7) for g in grams(toks, k))


def clean_prompts(n: int, bench_grams: set[str], short_items: set[str], rng: random.Random
                  ) -> tuple[list[str], int, int]:
    sources = real_prompts()
    kept = [t for t in sources if not overlaps(t, bench_grams, short_items)]
    sentences = list(dict.fromkeys(s.strip() for t in kept for s in re.split(r"(?<=[.!?])\s+|\n+", t)
                                   if len(s.split()) >= 3))
    out = []
    for _ in range(n):
        length = int(min(400, max(8, rng.lognormvariate(math.log(60), 0.7))))
        words: list[str] = []
        while len(words) < length:
            words += rng.choice(sentences).split()
        out.append(" ".join(words[:length]))
    return out, len(sources) - len(kept), len(sentences)


# --------------------------------------------------------------------------- baselines

_G: dict = {}


def _set_part(bounds: tuple[int, int]) -> list[int]:
    grams_set, n, texts = _G["set"], _G["n"], _G["texts"]
    out = []
    for r in range(*bounds):
        toks = simple_tokens(texts[r])
        if any(" ".join(toks[i:i + n]) in grams_set for i in range(len(toks) - n + 1)):
            out.append(r)
    return out


def _ac_part(bounds: tuple[int, int]) -> list[int]:
    ac, texts = _G["ac"], _G["texts"]
    out = []
    for r in range(*bounds):
        if ac.find_matches_as_indexes(" " + " ".join(simple_tokens(texts[r])) + " "):
            out.append(r)
    return out


def run_in_processes(fn, texts: list[str], processes: int = 2, chunk: int = 5000) -> np.ndarray:
    _G["texts"] = texts
    bounds = [(s, min(s + chunk, len(texts))) for s in range(0, len(texts), chunk)]
    flags = np.zeros(len(texts), bool)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for rows in pool.imap_unordered(fn, bounds):
            flags[rows] = True
    return flags


def make_set_lookup(items: list[str], n: int):
    t = time.perf_counter()
    s = {g for it in items for g in grams(simple_tokens(it), n)}
    build = time.perf_counter() - t

    def run(texts: list[str]) -> np.ndarray:
        _G.update(set=s, n=n)
        return run_in_processes(_set_part, texts)
    return run, build, {"grams": len(s), "items_without_a_gram": sum(len(simple_tokens(i)) < n for i in items)}


def make_aho_corasick(items: list[str], min_tokens: int = 6):
    import ahocorasick_rs

    t = time.perf_counter()
    patterns = list(dict.fromkeys(" " + " ".join(tk) + " " for tk in map(simple_tokens, items)
                                  if len(tk) >= min_tokens))
    ac = ahocorasick_rs.AhoCorasick(patterns)
    build = time.perf_counter() - t

    def run(texts: list[str]) -> np.ndarray:
        _G.update(ac=ac)
        return run_in_processes(_ac_part, texts)
    return run, build, {"patterns": len(patterns)}


def make_prefpipe(workers: int | None, index, config: DecontamConfig):
    cfg = config.model_copy(update={"workers": workers})

    def run(texts: list[str]) -> np.ndarray:
        hits = match_texts(pa.array(texts, pa.string()), index, cfg)
        return np.fromiter((bool(h) for h in hits), bool, len(hits))
    return run


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000, help="clean prompts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-benchmark", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", action="store_true", help="also time the stage on Parquet shards (one run)")
    ap.add_argument("--tier2-docs", type=int, default=0, help="also time tier 2 on this many prompts")
    ap.add_argument("--tier2-sets", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decontam.json")
    args = ap.parse_args()
    started = load()
    print(f"load at start: {started}")
    rng = random.Random(args.seed)
    config = DecontamConfig()
    t = time.perf_counter()
    index = build_benchmark_index(config)
    index_s = time.perf_counter() - t
    items = [it.text for it in index.items]
    print(f"benchmark items={len(items)} sets={len(index.per_benchmark())}; prefpipe index {index_s:.1f}s")
    methods, builds, extra = {}, {"prefpipe tier 1": round(index_s, 2)}, {}
    methods["prefpipe tier 1 (2 threads)"] = make_prefpipe(None, index, config)
    methods["prefpipe tier 1 (1 thread)"] = make_prefpipe(1, index, config)
    for n in (8, 13):
        run, b, info = make_set_lookup(items, n)
        methods[f"set lookup, any {n}-gram (2 processes)"] = run
        builds[f"set lookup {n}-gram"], extra[f"set lookup {n}-gram"] = round(b, 2), info
    try:
        run, b, info = make_aho_corasick(items)
        methods["Aho-Corasick, whole items (ahocorasick-rs, 2 processes)"] = run
        builds["Aho-Corasick"], extra["Aho-Corasick"] = round(b, 2), info
    except ImportError as e:
        print(f"skip Aho-Corasick: {e}; `pip install -e .[bench]`")

    # prompts: clean + planted
    bench8 = {g for it in items for g in grams(simple_tokens(it), 8)}
    short_items = {" ".join(tk) for tk in map(simple_tokens, items) if 6 <= len(tk) < 8}
    clean, dropped_sources, n_sentences = clean_prompts(args.docs, bench8, short_items, rng)
    norm_len = {i: len(simple_tokens(t)) for i, t in enumerate(items)}
    vocab = sorted({w for t in clean[:5000] for w in t.split()})
    by_bench: dict[str, list[int]] = {}
    short_by_bench: dict[str, list[int]] = {}
    seen = set()
    for i, it in enumerate(index.items):
        key = " ".join(simple_tokens(it.text))
        if key in seen:
            continue
        seen.add(key)
        if norm_len[i] >= 20:
            by_bench.setdefault(it.benchmark, []).append(i)
        elif norm_len[i] >= config.min_item_tokens:
            short_by_bench.setdefault(it.benchmark, []).append(i)
    planted = []  # (text, item, form, long)
    for group, long in ((by_bench, True), (short_by_bench, False)):
        for name in sorted(group):
            for i in rng.sample(group[name], min(args.per_benchmark, len(group[name]))):
                for form, text in forms(items[i], rng, vocab, long).items():
                    planted.append((text, i, form, long))
    texts = list(clean)
    kind = ["clean"] * len(clean)
    for p in planted:
        pos = rng.randrange(len(texts) + 1)
        texts.insert(pos, p[0])
        kind.insert(pos, p)
    is_clean = np.array([k == "clean" for k in kind])
    print(f"prompts={len(texts)}: clean={len(clean)} (sources left out for an overlap: {dropped_sources}; "
          f"{n_sentences} sentences), planted={len(planted)} "
          f"(items >= 20 tokens: {sum(1 for p in planted if p[3] and p[2] == 'verbatim')}, "
          f"6-19 tokens: {sum(1 for p in planted if not p[3] and p[2] == 'verbatim')})")

    names = list(methods)
    warm = texts[:2000]
    for n in names:
        methods[n](warm)
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
            flags[n] = methods[n](texts)
            times[n].append(time.perf_counter() - t)
            cpu[n].append(cpu_seconds() - c)
            print(f"  round {r} {n}: {len(texts) / times[n][-1]:,.0f} prompts/s")
        loads[-1]["after"] = os.getloadavg()

    results = {}
    pref = names[0]
    for n in names:
        f = flags[n]
        recall = {}
        for long, forms_ in ((True, LONG_FORMS), (False, SHORT_FORMS)):
            for form in forms_:
                rows = [k for k, p in enumerate(kind) if p != "clean" and p[2] == form and p[3] == long]
                recall[f"{form}{'' if long else ' (6-19 tokens)'}"] = round(float(f[rows].mean()), 4)
        both = int((f & flags[pref]).sum())
        rates = [len(texts) / s for s in times[n]]
        results[n] = {
            "prompts_per_s_min": round(min(rates)), "prompts_per_s_median": round(statistics.median(rates)),
            "seconds": [round(s, 3) for s in times[n]], "flagged": int(f.sum()),
            "cpu_seconds_per_100k_prompts_median": round(statistics.median(cpu[n]) * 1e5 / len(texts), 3),
            "false_positive_rate_clean": round(float(f[is_clean].mean()), 5),
            "clean_flagged": int(f[is_clean].sum()), "recall": recall,
            "overlap_with_prefpipe": {"both": both, "only_this": int((f & ~flags[pref]).sum()),
                                      "only_prefpipe": int((~f & flags[pref]).sum()),
                                      "jaccard": round(both / max(1, int((f | flags[pref]).sum())), 4)}}
    print()
    print(f"{'method':58s} {'min/s':>9s} {'median/s':>9s} {'cpu s/100k':>10s} {'flagged':>8s} {'FP clean':>9s}")
    for n in names:
        x = results[n]
        print(f"{n:58s} {x['prompts_per_s_min']:9,d} {x['prompts_per_s_median']:9,d} "
              f"{x['cpu_seconds_per_100k_prompts_median']:10.2f} {x['flagged']:8d} "
              f"{100 * x['false_positive_rate_clean']:8.3f}%")
    cols = list(results[pref]["recall"])
    print("\nrecall per form of the planted items")
    print(f"{'method':58s} " + " ".join(f"{c[:16]:>16s}" for c in cols))
    for n in names:
        print(f"{n:58s} " + " ".join(f"{results[n]['recall'][c]:16.3f}" for c in cols))
    print("\nflagged-set overlap with prefpipe (2 threads)")
    for n in names[1:]:
        o = results[n]["overlap_with_prefpipe"]
        print(f"  {n:58s} both {o['both']:7d}  only this {o['only_this']:7d}  only prefpipe {o['only_prefpipe']:7d}"
              f"  jaccard {o['jaccard']:.3f}")

    result = {"command": "benchmarks/bench_decontam.py " + " ".join(sys.argv[1:]), "uptime_start": started,
              "loadavg_per_round": loads, "cpus": os.cpu_count(), "benchmark_items": len(items),
              "benchmark_sets": len(index.per_benchmark()), "prompts": len(texts), "clean": len(clean),
              "planted": len(planted), "sources_left_out_for_an_overlap": dropped_sources,
              "rounds": args.rounds, "build_s": builds, "baseline_index": extra, "methods": results}
    if args.stage:  # the stage itself: Parquet shards in, kept shards + dropped rows + hits report out
        with tempfile.TemporaryDirectory() as work:
            shards = []
            for k, s in enumerate(range(0, len(texts), 50_000)):
                part = texts[s:s + 50_000]
                path = Path(work) / "in" / f"part-{k:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"id": [f"r{s + i}" for i in range(len(part))], "prompt": part}), path)
                shards.append(path)
            t = time.perf_counter()
            stats = decontaminate_shards(shards, Path(work) / "out", config, index, stage="decontam")
            elapsed = time.perf_counter() - t
            result["stage_on_shards"] = {"prompts_per_s": round(len(texts) / elapsed), "seconds": round(elapsed, 2),
                                         "dropped": stats.rows_dropped, "kept": stats.rows_out}
            print(f"\nstage (Parquet in/out, drops written): {len(texts) / elapsed:,.0f} prompts/s, "
                  f"dropped {stats.rows_dropped}")
    if args.tier2_docs:
        with tempfile.TemporaryDirectory() as cache:
            cfg2 = config.model_copy(update={"embedding": EmbeddingTier(enabled=True), "cache_dir": cache,
                                             "benchmarks": args.tier2_sets})
            t = time.perf_counter()
            index2 = build_benchmark_index(cfg2)
            embed_s = time.perf_counter() - t
            sub = texts[:args.tier2_docs]
            t = time.perf_counter()
            hits = embedding_hits(sub, index2, cfg2)
            elapsed = time.perf_counter() - t
            result["tier2"] = {"benchmark_embedding_s": round(embed_s, 1), "items": len(index2.items),
                               "prompts": len(sub), "prompts_per_s": round(len(sub) / elapsed),
                               "flagged": sum(1 for h in hits if h)}
            print(f"tier 2: {len(sub) / elapsed:.0f} prompts/s")
    result["uptime_end"] = load()
    print(f"\nload at end: {result['uptime_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
