"""Is the packaged Qwen2.5-Coder-1.5B-Instruct a usable pointwise judge? Each response of a pair is
rated alone (`annotate.method: judge_pointwise`, no rationale, ratings 1-9, score = the expectation
over the rating token's top-20 log-probs, TrustJudge), so the judge cannot prefer a position; a
pair's verdict is the higher rating. Measured on decisive gold pairs OUTSIDE the pooled sample of
bench_annotators.py (after the first 150 of each file's seeded shuffle), so nothing here is chosen on
the pairs the annotator tables report. Beside it, on the same pairs: "first position", "longer
response", and (when --cdr) the 1.5B / 0.5B per-token density ratio with a fitted combination.

    .venv/bin/python benchmarks/bench_pointwise_judge.py --pairs 30 --cache C   # results/pointwise-judge/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
PREF = ROOT.parent / "shared" / "data" / "real" / "preference"
GOLD = {"AlpacaEval": "alpaca_eval_alpaca-7b_vs_text-davinci-003_gpt4-judge_annotations.json.gz",
        "Auto-J": "autoj_testdata_pairwise.jsonl.gz", "hh-rlhf": "hh-rlhf_harmless-base_test.jsonl.gz"}
POOLED = 150  # pairs per file the annotator tables use: never measured on here
JUDGE = "qwen2.5-coder-1.5b-instruct"


def held_pairs(n: int) -> list:
    """The first n decisive pairs after the pooled sample of each file's seeded (0) shuffle."""
    import dataclasses

    from pipeline.annotate.gold import load_gold

    out = []
    for short, name in GOLD.items():
        pairs, _ = load_gold(PREF / name)
        order = random.Random(0).sample(range(len(pairs)), len(pairs))
        held = [pairs[i] for i in order[POOLED:] if pairs[i].label in ("a", "b")][:n]
        out += [dataclasses.replace(p, category=short) for p in held]
    return out


def lenient_rating(text: str):
    """The first digit 1-9 after "Rating:" (bracketed or not)."""
    import re

    from pipeline.annotate.parsing import ParseError, Parsed

    m = re.search(r"Rating:\s*(?:\[\[)?\s*([1-9])\b", text)
    if m is None:
        raise ParseError("no_rating", text[:40])
    return Parsed(m.group(1), m.start(1), "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30, help="decisive pairs per gold file")
    ap.add_argument("--cache", type=Path, default=None, help="eval-annotator score cache directory")
    ap.add_argument("--sample", choices=["held-out", "pooled"], default="held-out",
                    help="held-out: decisive pairs after the pooled sample; pooled: bench_annotators' pooled sample")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pointwise-judge")
    args = ap.parse_args()

    from pipeline.annotate.config import AnnotateConfig
    from pipeline.annotate.eval import annotator_engines, cached_engines
    from pipeline.annotate.expectation import expected_rating
    from pipeline.annotate.judge import PointwiseJudge, RateItem, _token_alternatives, ask

    if args.sample == "pooled":
        from bench_annotators import pooled_pairs

        import dataclasses

        short = {name: k for k, name in GOLD.items()}
        pairs = [dataclasses.replace(p, category=short[p.category]) for p in pooled_pairs(args.pairs, 0)]
    else:
        pairs = held_pairs(args.pairs)
    config = AnnotateConfig.model_validate({
        "method": "judge_pointwise", "rationale": False, "max_tokens": 8, "retries": 0,
        "rating_min": 1, "rating_max": 9, "expectation": True, "batch_size": 16,
        "models": {"judge": {"engine": "vllm", "model": JUDGE, "options": {"max_model_len": 8192}}}})
    engines = annotator_engines(config)
    t0 = time.perf_counter()
    with cached_engines(config, engines, len(pairs), args.cache, f"rate {JUDGE}") as (cached, requests):
        judge = PointwiseJudge(cached["judge"], config)
        items = [RateItem(p.prompt, r) for p in pairs for r in (p.response_a, p.response_b)]
        # the 1.5B model writes "Rating: 9" more often than the asked-for "Rating: [[9]]", which the
        # product's strict parser rejects; here the first digit after "Rating:" is read either way
        answers = ask(cached["judge"], [judge.prompt(i, None) for i in items], lenient_rating, config)
    seconds = time.perf_counter() - t0
    for e in {id(e): e for e in engines.values()}.values():
        e.close()
    exp, arg, strict = [], [], 0
    for a in answers:
        alternatives = _token_alternatives(a) if a.parsed else None
        exp.append(expected_rating(alternatives, 1, 9)[0] if alternatives else None)
        arg.append(float(a.parsed.value) if a.parsed else None)
        strict += "[[" in a.raw

    def acc(pred: np.ndarray, gold: np.ndarray, keep: np.ndarray) -> float:
        return round(float((pred[keep] == gold[keep]).mean()), 3)

    decisive = [i for i, p in enumerate(pairs) if p.label in ("a", "b")]  # metrics exclude gold ties
    answers = [answers[j] for i in decisive for j in (2 * i, 2 * i + 1)]
    exp = [exp[j] for i in decisive for j in (2 * i, 2 * i + 1)]
    arg = [arg[j] for i in decisive for j in (2 * i, 2 * i + 1)]
    pairs = [pairs[i] for i in decisive]
    gold = np.asarray([p.label == "a" for p in pairs])
    files = np.asarray([p.category for p in pairs])
    exp = np.asarray([np.nan if v is None else v for v in exp])
    arg = np.asarray([np.nan if v is None else v for v in arg])
    rows = {}
    for name, s in (("judge 1.5B, expectation", exp), ("judge 1.5B, argmax", arg)):
        da, db = s[0::2], s[1::2]
        pred = da > db
        decided = np.isfinite(da) & np.isfinite(db) & (da != db)
        rows[name] = {"ties or failed": int((~decided).sum()),
                      **{f: acc(pred, gold, (files == f) & decided) for f in GOLD},
                      "pooled (decided)": acc(pred, gold, decided)}
    longer = np.asarray([len(p.response_a) > len(p.response_b) for p in pairs])
    every = np.ones(len(pairs), bool)
    for name, pred in (("baseline: first position", np.ones(len(pairs), bool)), ("baseline: longer response", longer)):
        rows[name] = {"ties or failed": 0, **{f: acc(pred, gold, files == f) for f in GOLD},
                      "pooled (decided)": acc(pred, gold, every)}
    report = {"judge": JUDGE, "pairs_per_file": args.pairs, "seconds": round(seconds, 1),
              "responses": len(answers), "requests": requests, "unreadable": sum(a.parsed is None for a in answers), "in_the_asked_format": strict,
              "mean_expectation": round(float(np.nanmean(exp)), 3), "sd_expectation": round(float(np.nanstd(exp)), 3),
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pointwise-judge.json").write_text(json.dumps(report, indent=1) + "\n")
    cols = list(GOLD) + ["pooled (decided)", "ties or failed"]
    lines = ["| annotator | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |" for name, r in rows.items()]
    (args.out / "pointwise-judge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(answers)} responses rated in {seconds:.0f} s; expectation mean {report['mean_expectation']}, "
          f"sd {report['sd_expectation']}")


if __name__ == "__main__":
    main()
