"""eval-annotator numbers of the packaged models on a fixed random slice of Auto-J pairwise.

    python benchmarks/bench_annotators.py judge --pairs 60    # Qwen2.5-Coder-0.5B-Instruct pairwise judge
    python benchmarks/bench_annotators.py cdr --pairs 60      # CDR strong=Qwen 0.5B-Instruct / weak=Gemma 270M

One both-orders judge run (vLLM engine) reports single order, both orders and expectation (each
with its own wall time); one CDR run reports the per-token (the demo's), summed and per-character
density ratios from the same log-probs. Results go to benchmarks/results/annotators-<part>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.annotate.config import AnnotateConfig  # noqa: E402
from pipeline.annotate.eval import evaluate_annotator, open_engines, write_report  # noqa: E402
from pipeline.annotate.gold import load_gold  # noqa: E402

GOLD = ROOT.parent / "shared" / "data" / "real" / "preference" / "autoj_testdata_pairwise.jsonl.gz"
CONFIGS = {
    "judge": {"method": "judge_pairwise", "rationale": False, "max_tokens": 8, "retries": 1,
              "models": {"judge": {"engine": "vllm", "model": "qwen2.5-coder-0.5b-instruct",
                                  "options": {"max_model_len": 8192}}}},
    # the demo's annotator; the run also reports the summed and per-character forms
    "cdr": {"method": "density_ratio", "length_norm": "tokens",
            "models": {"strong": {"engine": "transformers", "model": "qwen2.5-coder-0.5b-instruct"},
                       "weak": {"engine": "transformers", "model": "gemma3-270m"}}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=sorted(CONFIGS))
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = AnnotateConfig.model_validate(CONFIGS[args.part])
    pairs, rejected = load_gold(GOLD, limit=args.pairs, seed=args.seed)
    t0 = time.perf_counter()
    engines = open_engines(config)
    load_s = time.perf_counter() - t0
    report = evaluate_annotator(config, engines, pairs)
    report["gold"] = {"path": GOLD.name, "pairs": len(pairs), "seed": args.seed,
                      "rejected": {r: sum(1 for _, x in rejected if x == r) for _, r in rejected}}
    report["engine_load_seconds"] = round(load_s, 1)
    js, md = write_report(report, ROOT / "benchmarks" / "results" / f"annotators-{args.part}")
    print(md.read_text())
    print(json.dumps({k: v["accuracy_excluding_ties"] for k, v in report["variants"].items()}))


if __name__ == "__main__":
    main()
