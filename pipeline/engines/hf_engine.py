"""transformers engine (CPU or GPU): scoring, hidden states, generation, reward models.

Causal LMs get generate/score/top_logprobs/hidden_states; a sequence-classification checkpoint
(`*ForSequenceClassification`) is a reward model and gets `reward` only. Prompts are built by
`pipeline.engines.chat`, exactly as the vLLM and HTTP engines build them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.engines import chat
from pipeline.engines.base import (GENERATE, HIDDEN_STATES, REWARD, SCORE, TOP_LOGPROBS, ChatRequest,
                                   Completion, ScoreRequest, TokenScores, UnsupportedCapability)


class TransformersEngine:
    def __init__(self, model: str | Path, *, model_id: str | None = None, dtype: str = "auto",
                 device: str | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
        from transformers import AutoTokenizer

        self.path = str(model)
        self.model_id = model_id or self.path
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = AutoConfig.from_pretrained(self.path)
        archs = getattr(config, "architectures", None) or []
        self.is_reward_model = any(a.endswith("ForSequenceClassification") for a in archs)
        cls = AutoModelForSequenceClassification if self.is_reward_model else AutoModelForCausalLM
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        self.model = cls.from_pretrained(self.path, dtype=torch_dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.capabilities = frozenset(
            {REWARD} if self.is_reward_model else {GENERATE, SCORE, TOP_LOGPROBS, HIDDEN_STATES})

    # -- helpers -------------------------------------------------------------------------------

    def _need(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise UnsupportedCapability(f"{self.model_id!r} (transformers) does not support {capability}")

    def _padded(self, seqs: list[list[int]]):
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: positions are 0..len-1 as in an unpadded run
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, items: list):
        # sort by length so each batch pads little; yield (original indices, items)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        for k in range(0, len(order), self.batch_size):
            idx = order[k: k + self.batch_size]
            yield idx, [items[i] for i in idx]

    def _response_states(self, requests: list[ScoreRequest]):
        """Yield (request index, final-layer hidden states [T, H], response token ids [T]) where
        row t is the state at the position that predicts response token t."""
        import torch

        items = [chat.scoring_ids(self.tokenizer, r.prompt, r.response, r.system) for r in requests]
        decoder = self.model.get_decoder()
        with torch.inference_mode():
            for idx, batch in self._batches(items):
                ids, mask = self._padded([seq for seq, _ in batch])
                hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                for row, i in enumerate(idx):
                    seq, n_prompt = batch[row]
                    states = hidden[row, n_prompt - 1: len(seq) - 1]
                    yield i, states, torch.tensor(seq[n_prompt:], device=self.device)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
        return {i for i in ids if i is not None}

    def _logits(self, states):
        logits = self.model.get_output_embeddings()(states).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            import torch

            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- protocol ------------------------------------------------------------------------------

    def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        self._need(SCORE)
        out: list[TokenScores | None] = [None] * len(requests)
        for i, states, targets in self._response_states(requests):
            logp = self._logits(states).log_softmax(-1)
            picked = logp.gather(-1, targets[:, None]).squeeze(-1)
            out[i] = TokenScores([float(x) for x in picked.cpu()])
        return out  # type: ignore[return-value]

    def hidden_states(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        self._need(HIDDEN_STATES)
        out: list[np.ndarray | None] = [None] * len(requests)
        for i, states, _ in self._response_states(requests):
            out[i] = states.float().cpu().numpy().astype(np.float32)
        return out  # type: ignore[return-value]

    def reward(self, requests: list[ScoreRequest]) -> list[float]:
        self._need(REWARD)
        import torch

        items = [(chat.conversation_ids(self.tokenizer, r.prompt, r.response, r.system), None)
                 for r in requests]
        out: list[float | None] = [None] * len(requests)
        with torch.inference_mode():
            for idx, batch in self._batches(items):
                ids, mask = self._padded([seq for seq, _ in batch])
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                for row, i in enumerate(idx):
                    out[i] = float(logits[row, 0])
        return out  # type: ignore[return-value]

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        """One request at a time (no padding effects); sampling seeded by `params.seed`."""
        self._need(GENERATE)
        import torch

        eos = self._eos_ids()
        results = []
        for req in requests:
            p = req.params
            ids = chat.prompt_ids(self.tokenizer, req.messages, req.system)
            stop = tuple(p.stop) + (() if chat.has_chat_template(self.tokenizer) else chat.PLAIN_STOP)
            kwargs = dict(max_new_tokens=p.max_tokens, num_return_sequences=p.n,
                          return_dict_in_generate=True, output_logits=p.logprobs is not None,
                          pad_token_id=self.tokenizer.pad_token_id)
            if p.temperature > 0:
                kwargs.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
            if p.seed is not None:
                torch.manual_seed(p.seed)
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=torch.tensor([ids], device=self.device),
                                          attention_mask=torch.ones((1, len(ids)), dtype=torch.long,
                                                                    device=self.device), **kwargs)
            latency = time.perf_counter() - start
            completions = []
            for k in range(p.n):
                new = out.sequences[k, len(ids):].tolist()
                # samples that finished early are padded: cut after the first EOS, drop padding
                ends = [t for t, tok in enumerate(new) if tok in eos]
                if ends:
                    new = new[: ends[0] + 1]
                pad = self.tokenizer.pad_token_id
                while new and new[-1] == pad and pad not in eos:
                    new.pop()
                # a byte-level token sequence cut mid-character decodes to U+FFFD at the end; vLLM
                # holds such incomplete bytes back, and so do we
                text = self.tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")
                finish = "length"
                if new and new[-1] in eos:
                    finish = "stop"
                for s in stop:
                    if s in text:
                        text, finish = text[: text.index(s)], "stop"
                top = None
                if p.logprobs is not None:
                    top = []
                    for t in range(len(new)):
                        logp = out.logits[t][k].float().log_softmax(-1)
                        vals, toks = logp.topk(max(p.logprobs, 1))
                        top.append({self.tokenizer.decode([int(tok)]): float(v)
                                    for v, tok in zip(vals, toks)})
                completions.append(Completion(text=text, finish_reason=finish, prompt_tokens=len(ids),
                                              completion_tokens=len(new), top_logprobs=top,
                                              latency_s=latency / p.n))
            results.append(completions)
        return results

    def close(self) -> None:
        self.model = None
        import gc

        gc.collect()
