"""eval-annotator numbers of the packaged models on a fixed random slice of Auto-J pairwise.

    python benchmarks/bench_annotators.py judge --pairs 60    # Qwen2.5-Coder-0.5B-Instruct pairwise judge
    python benchmarks/bench_annotators.py cdr --pairs 60      # CDR strong=Qwen 0.5B-Instruct / weak=Gemma 270M
    python benchmarks/bench_annotators.py cdr-candidates --pairs 100   # every packaged strong/weak pair

One both-orders judge run (vLLM engine) reports single order, both orders and expectation (each
with its own wall time); one CDR run reports the per-token (the demo's), summed and per-character
density ratios from the same log-probs. `cdr-candidates` scores every response once under each
packaged model (Qwen 1.5B-Instruct, Qwen 0.5B-Instruct, Gemma 3 270M base) and reports every
strong/weak pair the engines issue names, summed and per token, next to the "longer response wins"
baseline; a pair's seconds are its two models' scoring seconds. Results go to
benchmarks/results/annotators-<part>/eval-annotator.{json,md}.
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
from pipeline.annotate.density_ratio import density_ratio, score_all  # noqa: E402
from pipeline.annotate.eval import _score_verdicts, annotator_engines, evaluate_annotator, metrics, write_report  # noqa: E402
from pipeline.annotate.gold import load_gold  # noqa: E402
from pipeline.engines.registry import load_engine  # noqa: E402

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


# strong/weak candidates for the default density ratio (engines issue): strong = Qwen 1.5B or 0.5B
# Instruct, weak = Gemma 3 270M base or Qwen 0.5B Instruct
CANDIDATE_MODELS = ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"]
CANDIDATE_PAIRS = [("qwen2.5-coder-0.5b-instruct", "gemma3-270m"),
                   ("qwen2.5-coder-1.5b-instruct", "gemma3-270m"),
                   ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")]


def cdr_candidates(pairs: list, seed: int) -> dict:
    """One scoring pass per model, then every candidate pair and length normalisation from it."""
    config = AnnotateConfig.model_validate(CONFIGS["cdr"])
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.response_a, p.response_b)]
    scores, seconds = {}, {}
    for name in CANDIDATE_MODELS:
        engine = load_engine(name, "transformers")
        t0 = time.perf_counter()
        scores[name] = score_all(engine, prompts, responses, [None] * len(prompts), config.batch_size)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        del engine
    gold = [p.label for p in pairs]
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    variants = {}
    for strong, weak in CANDIDATE_PAIRS:
        for norm in ("none", "tokens"):
            r = [density_ratio(s.total, s.num_tokens, w.total, w.num_tokens, text, norm)
                 for s, w, text in zip(scores[strong], scores[weak], responses)]
            m = metrics(gold, _score_verdicts(r[0::2], r[1::2], config.tie_margin), la, lb, seed=seed)
            m["seconds"] = round(seconds[strong] + seconds[weak], 1)
            m["seconds_per_pair"] = round(m["seconds"] / len(pairs), 3)
            variants[f"{strong} / {weak} [length_norm={norm}]"] = m
    longer = _score_verdicts(la, lb, 0)
    variants["baseline: longer response wins"] = {**metrics(gold, longer, la, lb, seed=seed), "seconds": 0.0}
    return {"annotator": "cdr candidates", "method": "density_ratio", "models": CANDIDATE_MODELS,
            "model_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "gold_labels": {k: gold.count(k) for k in sorted(set(gold))}, "variants": variants}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=sorted(CONFIGS) + ["cdr-candidates"])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pairs, rejected = load_gold(GOLD, limit=args.pairs, seed=args.seed)
    if args.part == "cdr-candidates":
        report = cdr_candidates(pairs, args.seed)
    else:
        config = AnnotateConfig.model_validate(CONFIGS[args.part])
        t0 = time.perf_counter()
        engines = annotator_engines(config)
        load_s = time.perf_counter() - t0
        report = evaluate_annotator(config, engines, pairs)
        report["engine_load_seconds"] = round(load_s, 1)
    report["gold"] = {"path": GOLD.name, "pairs": len(pairs), "seed": args.seed,
                      "rejected": {r: sum(1 for _, x in rejected if x == r) for _, r in rejected}}
    js, md = write_report(report, ROOT / "benchmarks" / "results" / f"annotators-{args.part}")
    print(md.read_text())
    print(json.dumps({k: v["accuracy_excluding_ties"] for k, v in report["variants"].items()}))

if __name__ == "__main__":
    main()
