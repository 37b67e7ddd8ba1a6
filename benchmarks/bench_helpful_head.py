"""Is there a helpfulness signal in the packaged MiniLM embeddings? A linear Bradley-Terry head
(no intercept, both orders of every pair) fitted on Arena-Hard v0.1's two baseline answers per prompt
under the weak label "GPT-4-0314's answer beats GPT-3.5-turbo-0125's" (the larger-model-is-better
assumption of synthetic-feedback work), measured on the decisive gold pairs OUTSIDE the pooled
sample of bench_annotators.py (`pooled_pairs`: the first 150 of each file's seeded shuffle), so
nothing here chose or tuned on the pairs the annotator tables report. Beside it, on the same pairs:
"first position" and "longer response".

    .venv/bin/python benchmarks/bench_helpful_head.py     # results/helpful-head/helpful-head.{json,md}
"""

from __future__ import annotations

import gzip
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "real"
GOLD = ["alpaca_eval_alpaca-7b_vs_text-davinci-003_gpt4-judge_annotations.json.gz",
        "autoj_testdata_pairwise.jsonl.gz", "hh-rlhf_harmless-base_test.jsonl.gz"]
POOLED = 150  # pairs per file the annotator tables use: never measured on here


def _arena(model: str) -> dict:
    with gzip.open(REAL / f"prompts/arena-hard-v0.1_answers_{model}.jsonl.gz", "rt") as f:
        return {row["uid"]: row for row in map(json.loads, f)}


def _features(prompts, a, b) -> dict[str, np.ndarray]:
    from pipeline.filters.embed import embed_texts

    ea, eb, ep = embed_texts(list(a)), embed_texts(list(b)), embed_texts(list(prompts))
    cos = ((ep * ea).sum(1) - (ep * eb).sum(1))[:, None]
    chars = (np.log1p([len(x) for x in a]) - np.log1p([len(x) for x in b]))[:, None]
    return {"response embedding": ea - eb, "+ prompt-response cosine": np.hstack([ea - eb, cos]),
            "+ cosine + log chars": np.hstack([ea - eb, cos, chars]), "log chars alone": chars}


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    from pipeline.annotate.gold import load_gold
    from pipeline.engines.chat import last_user_turn

    t0 = time.perf_counter()
    strong, weak = _arena("gpt-4-0314"), _arena("gpt-3.5-turbo-0125")
    uids = sorted(set(strong) & set(weak))
    train = _features([strong[u]["messages"][0]["content"] for u in uids],
                      [strong[u]["messages"][1]["content"]["answer"] for u in uids],
                      [weak[u]["messages"][1]["content"]["answer"] for u in uids])
    report: dict = {"training_pairs": len(uids), "files": {}, "variants": {}}
    heads = {name: LogisticRegression(C=1.0, fit_intercept=False, max_iter=5000).fit(
        np.vstack([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))]) for name, x in train.items()}
    for path in GOLD:
        pairs, _ = load_gold(REAL / "preference" / path)
        order = random.Random(0).sample(range(len(pairs)), len(pairs))
        held = [pairs[i] for i in order[POOLED:] if pairs[i].label in ("a", "b")]
        gold = np.asarray([p.label == "a" for p in held])
        longer = np.asarray([len(p.response_a) > len(p.response_b) for p in held])
        report["files"][path] = {"pairs": len(held), "first position": round(float(gold.mean()), 3),
                                 "longer response": round(float((longer == gold).mean()), 3)}
        x = _features([last_user_turn(p.prompt) for p in held], [p.response_a for p in held],
                      [p.response_b for p in held])
        for name, head in heads.items():
            report["variants"].setdefault(name, {})[path] = round(float(((x[name] @ head.coef_[0] > 0) == gold).mean()), 3)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    short = {GOLD[0]: "AlpacaEval", GOLD[1]: "Auto-J", GOLD[2]: "hh-rlhf"}
    lines = ["| annotator | " + " | ".join(f"{short[f]} ({report['files'][f]['pairs']})" for f in GOLD) + " |",
             "|---|" + "---|" * len(GOLD)]
    lines += [f"| head: {name} | " + " | ".join(f"{acc[f]:.3f}" for f in GOLD) + " |"
              for name, acc in report["variants"].items()]
    lines += [f"| baseline: {b} | " + " | ".join(f"{report['files'][f][b]:.3f}" for f in GOLD) + " |"
              for b in ("first position", "longer response")]
    out = ROOT / "benchmarks" / "results" / "helpful-head"
    out.mkdir(parents=True, exist_ok=True)
    (out / "helpful-head.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "helpful-head.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), f"\n{report['seconds']} s")


if __name__ == "__main__":
    main()
