"""Density-ratio scoring speed: the vLLM engine's `prompt_logprobs` (prefix shared across a prompt's
responses, and not) against the transformers engine, on the same requests, interleaved in one run.

    python benchmarks/bench_scoring.py --pairs 24 --rounds 2

Requests: the two responses of the first N pairs of a seeded shuffle of real hh-rlhf harmless test
pairs (multi-turn prompts) under the packaged Qwen2.5-Coder-0.5B-Instruct (fp32, the demo's strong
model). Each round runs every side once, in rotated order; each side's vLLM prefix cache is its own
engine's, and a round's requests are new to it (each round takes the next N pairs). Reports tokens
per second (prompt + response tokens of every request), the prefix tokens vLLM reused, and the
largest difference of a response's summed log-prob between the engines. Writes
benchmarks/results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.annotate.gold import load_gold  # noqa: E402
from pipeline.engines import chat  # noqa: E402
from pipeline.engines.base import ScoreRequest  # noqa: E402
from pipeline.engines.chat import message_tuples  # noqa: E402

GOLD = ROOT.parent / "shared" / "data" / "real" / "preference" / "hh-rlhf_harmless-base_test.jsonl.gz"
MODEL = "qwen2.5-coder-0.5b-instruct"


def requests(pairs: list) -> list[ScoreRequest]:
    return [ScoreRequest(prompt=message_tuples(p.prompt), response=r) for p in pairs
            for r in (p.response_a, p.response_b)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="requests per engine call (AnnotateConfig.batch_size)")
    args = ap.parse_args()
    from pipeline.engines.hf_engine import TransformersEngine
    from pipeline.engines.packaged import ensure_model
    from pipeline.engines.vllm_engine import VLLMEngine

    path = ensure_model(MODEL)
    pairs, _ = load_gold(GOLD)
    order = random.Random(0).sample(range(len(pairs)), len(pairs))
    engines = {"transformers": TransformersEngine(path, model_id=MODEL, dtype="float32"),
               "vllm, prefix shared": VLLMEngine(path, model_id=MODEL, dtype="float32", share_prefix=True),
               "vllm, no sharing": VLLMEngine(path, model_id=MODEL, dtype="float32", share_prefix=False,
                                              enable_prefix_caching=False)}
    sides = list(engines)
    tok = engines["transformers"].tokenizer
    seconds = {s: 0.0 for s in sides}
    tokens = 0
    totals: dict[str, list[float]] = {s: [] for s in sides}
    for rnd in range(args.rounds):
        batch = requests([pairs[i] for i in order[rnd * args.pairs:(rnd + 1) * args.pairs]])
        tokens += sum(len(chat.scoring_ids(tok, r.prompt, r.response, r.system)[0]) for r in batch)
        for side in sides[rnd % len(sides):] + sides[:rnd % len(sides)]:
            t0 = time.perf_counter()
            out = [s for i in range(0, len(batch), args.batch) for s in engines[side].score(batch[i:i + args.batch])]
            seconds[side] += time.perf_counter() - t0
            totals[side] += [s.total for s in out]
            print(f"round {rnd} {side}: {time.perf_counter() - t0:.1f} s", flush=True)
    ref = totals["transformers"]
    result = {
        "command": f"python benchmarks/bench_scoring.py --pairs {args.pairs} --rounds {args.rounds} --batch {args.batch}",
        "model": MODEL, "dtype": "float32", "requests": 2 * args.pairs * args.rounds, "tokens": tokens,
        "sides": {s: {"seconds": round(seconds[s], 2), "tokens_per_s": round(tokens / seconds[s], 1),
                      "max_abs_total_diff_vs_transformers": max(abs(a - b) for a, b in zip(totals[s], ref))}
                  for s in sides},
        "prefix_tokens_reused": engines["vllm, prefix shared"].prefix_tokens_reused,
        "engine_start_s": {s: round(getattr(e, "start_s", 0.0), 1) for s, e in engines.items()},
    }
    fastest = min(sides, key=lambda s: seconds[s])
    result["fastest"] = fastest
    result["ratio_vs_transformers"] = {s: round(seconds["transformers"] / seconds[s], 3) for s in sides}
    out = ROOT / "benchmarks" / "results" / "scoring.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for e in engines.values():
        e.close()


if __name__ == "__main__":
    main()
