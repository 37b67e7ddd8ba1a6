"""Scale benchmark (not a test): N conversations through ingest -> exact + near-dup dedup ->
decontamination -> pairs -> publish, with the real `prefpipe build` (Prefect, local runner).

The corpus is built from the real prompts and responses in ../shared/data/real (hh-rlhf, Auto-J,
AlpacaEval, Arena-Hard, self-instruct) with light mutations (a numbered suffix, a swapped word, a
dropped word), so most rows are distinct and a known share are exact or near duplicates.
Reports wall time, peak RSS of the build process tree and t(N_large)/t(N_small).

    .venv/bin/python benchmarks/bench_scale.py --sizes 100000 1000000 --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def base_pairs() -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples from the real data."""
    out = []
    with gzip.open(REAL / "preference/autoj_testdata_pairwise.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            out.append((r["prompt"], r["response 1"], r["response 2"]))
    a = json.loads((REAL / "prompts/alpaca_eval_text-davinci-003_outputs.json").read_text())
    b = json.loads((REAL / "prompts/alpaca_eval_alpaca-7b_outputs.json").read_text())
    out += [(x["instruction"], x["output"], y["output"]) for x, y in zip(a, b)]
    with gzip.open(REAL / "preference/hh-rlhf_harmless-base_test.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            head, _, chosen = r["chosen"].rpartition("\n\nAssistant:")
            rejected = r["rejected"].rpartition("\n\nAssistant:")[2]
            prompt = head.rpartition("\n\nHuman:")[2].strip()
            out.append((prompt, chosen.strip(), rejected.strip()))
    return [t for t in out if all(s.strip() for s in t)]


def mutate(text: str, rng: random.Random, i: int) -> str:
    words = text.split()
    kind = rng.random()
    if kind < 0.05:
        return text  # exact duplicate of the base row
    if kind < 0.15 and len(words) > 12:  # near duplicate: one word dropped
        del words[rng.randrange(len(words))]
        return " ".join(words)
    if len(words) > 3:  # a swapped pair of words
        j = rng.randrange(len(words) - 1)
        words[j], words[j + 1] = words[j + 1], words[j]
    return " ".join(words) + f" (case {i})"


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    base = base_pairs()
    with open(path, "w") as f:
        for i in range(n):
            p, c, r = base[rng.randrange(len(base))]
            f.write(json.dumps({"prompt": mutate(p, rng, i), "chosen": c, "rejected": r}) + "\n")


def run(n: int, work: Path) -> dict:
    corpus = work / f"corpus-{n}.jsonl"
    t0 = time.perf_counter()
    write_corpus(corpus, n)
    corpus_s = time.perf_counter() - t0
    recipe = work / f"recipe-{n}.yaml"
    recipe.write_text(yaml.safe_dump({
        "inputs": [{"path": str(corpus), "format": "pairs"}],
        "ingest": {"shard_rows": 50_000},
        "dedup": {"exact": True, "near": {"enabled": True}},
        "decontam": {},
        "output": {"dataset": f"scale-{n}"},
    }))
    root = work / f"root-{n}"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", str(recipe), "--data-root", str(root)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, _, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, None) and not (root / "datasets").exists():
        raise SystemExit(f"build of {n} failed:\n{stderr[-3000:]}")
    manifest = json.loads(next((root / "datasets").glob("*/v0001/manifest.json")).read_text())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"conversations": n, "corpus_write_s": round(corpus_s, 1), "build_wall_s": round(wall, 1),
            "rows_per_s": round(n / wall), "peak_rss_build_gib": round(rusage.ru_maxrss / 2**20, 2),
            "peak_rss_any_child_gib": round(children / 2**20, 2), "rows_published": manifest["rows"],
            "funnel": manifest["funnel"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefpipe-scale-") as tmp:
        results = [run(n, Path(tmp)) for n in args.sizes]
    for r in results:
        print(f"{r['conversations']:>9,} rows: {r['build_wall_s']:8.1f} s  {r['rows_per_s']:>7,} rows/s  "
              f"peak RSS {r['peak_rss_build_gib']} GiB  published {r['rows_published']:,}")
    summary = {"results": results}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        summary["time_ratio"] = round(large["build_wall_s"] / small["build_wall_s"], 2)
        summary["size_ratio"] = large["conversations"] / small["conversations"]
        print(f"t({large['conversations']:,}) / t({small['conversations']:,}) = {summary['time_ratio']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
