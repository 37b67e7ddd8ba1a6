"""Generation and scoring throughput: prefpipe's VLLMEngine vs raw `vllm.LLM.generate`.

Both sides use the same `vllm.LLM` instance, prompts and sampling parameters in the same run; the
raw side gets its token ids prepared outside the timed region (the strictest baseline). Rounds
alternate which side goes first, after a warm-up; prefix caching is off so neither side reuses the
other's work. Reports tokens/s and the pipeline/raw ratio (target >= 0.9).

    .venv/bin/python benchmarks/bench_generation.py --model qwen2.5-coder-0.5b-instruct \\
        --prompts 16 --max-tokens 64 --out benchmarks/results/generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "real" / "prompts" / "alpaca_eval_text-davinci-003_outputs.json"


def load_pairs(n: int, path: Path) -> list[tuple[str, str]]:
    """(instruction, reference answer) pairs: prompts for generation, responses for scoring."""
    rows = json.loads(path.read_text())
    return [(r["instruction"], r["output"]) for r in rows[:n]]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="registry name or directory")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", type=Path, default=ALPACA, help="AlpacaEval-style JSON (instruction, output)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "generation.json")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import SamplingParams as VSP
    from vllm.inputs import TokensPrompt

    from pipeline.engines import chat
    from pipeline.engines.base import ChatRequest, SamplingParams, ScoreRequest
    from pipeline.engines.packaged import resolve
    from pipeline.engines.vllm_engine import VLLMEngine

    model_dir = resolve(args.model)
    pairs = load_pairs(args.prompts, args.data)
    # no prefix caching: the second side of a round would otherwise reuse the first side's KV blocks
    engine = VLLMEngine(model_dir, model_id=args.model, dtype=args.dtype, max_model_len=4096,
                        enable_prefix_caching=False)
    llm, tok = engine.llm, engine.tokenizer

    params = SamplingParams(n=1, temperature=0.7, max_tokens=args.max_tokens, seed=0)
    gen_requests = [ChatRequest(((("user", q),)), params) for q, _ in pairs]
    raw_prompts = [TokensPrompt(prompt_token_ids=chat.prompt_ids(tok, r.messages)) for r in gen_requests]
    raw_params = [VSP(n=1, temperature=0.7, max_tokens=args.max_tokens, seed=0) for _ in gen_requests]
    score_requests = [ScoreRequest((("user", q),), a) for q, a in pairs]
    score_items = [chat.scoring_ids(tok, r.prompt, r.response) for r in score_requests]
    raw_score_prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in score_items]
    raw_score_params = VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0)

    llm.generate(raw_prompts[:2], raw_params[:2], use_tqdm=False)  # warm-up
    t = {"gen_raw": 0.0, "gen_pipe": 0.0, "score_raw": 0.0, "score_pipe": 0.0}
    gen_tokens = identical = 0
    raw_gen = lambda: llm.generate(raw_prompts, raw_params, use_tqdm=False)  # noqa: E731
    pipe_gen = lambda: engine.generate(gen_requests)  # noqa: E731
    raw_score = lambda: llm.generate(raw_score_prompts, raw_score_params, use_tqdm=False)  # noqa: E731
    pipe_score = lambda: engine.score(score_requests)  # noqa: E731
    for round_ in range(args.rounds):
        order = ("raw", "pipe") if round_ % 2 == 0 else ("pipe", "raw")  # alternate who goes first
        outs = {}
        for side in order:
            outs[side], dt = timed(raw_gen if side == "raw" else pipe_gen)
            t[f"gen_{side}"] += dt
        gen_tokens += sum(len(o.outputs[0].token_ids) for o in outs["raw"])
        identical += sum(o.outputs[0].text == p[0].text for o, p in zip(outs["raw"], outs["pipe"]))
        for side in order:
            _, dt = timed(raw_score if side == "raw" else pipe_score)
            t[f"score_{side}"] += dt

    scored_tokens = args.rounds * sum(len(ids) for ids, _ in score_items)
    response_tokens = args.rounds * sum(len(ids) - n for ids, n in score_items)
    result = {
        "model": args.model, "dtype": str(llm.llm_engine.model_config.dtype),
        "prompts": len(pairs), "max_tokens": args.max_tokens, "rounds": args.rounds,
        "engine_start_s": round(engine.start_s, 1),
        "generation": {
            "completion_tokens": gen_tokens,
            "raw_tok_s": round(gen_tokens / t["gen_raw"], 1),
            "pipeline_tok_s": round(gen_tokens / t["gen_pipe"], 1),
            "ratio": round(t["gen_raw"] / t["gen_pipe"], 3),
            "identical_outputs": f"{identical}/{args.rounds * len(pairs)}",
        },
        "scoring": {
            "tokens_processed": scored_tokens, "response_tokens": response_tokens,
            "raw_tok_s": round(scored_tokens / t["score_raw"], 1),
            "pipeline_tok_s": round(scored_tokens / t["score_pipe"], 1),
            "ratio": round(t["score_raw"] / t["score_pipe"], 3),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
