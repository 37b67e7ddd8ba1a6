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
                                   Completion, ScoreRequest, TokenScores, UnsupportedCapability,
                                   release_memory)


class TransformersEngine:
    # causal LMs offer all but REWARD; sequence-classification models only REWARD
    OFFERS = frozenset({GENERATE, SCORE, TOP_LOGPROBS, HIDDEN_STATES, REWARD})

    def __init__(self, model: str | Path, *, model_id: str | None = None, dtype: str = "auto",
                 device: str | None = None, batch_size: int = 8, share_prompts: bool = True):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the stage's own progress shows; weight loading is noise

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
        # sliding-window layers keep a cropped cache, so only full-attention models share prompts
        layer_types = getattr(config.get_text_config(), "layer_types", None) or ["full_attention"]
        self.share_prompts = share_prompts and all(t == "full_attention" for t in layer_types)

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
        with torch.inference_mode():
            if self.share_prompts:
                yield from self._shared_prompt_states(items)
            else:
                yield from self._full_sequence_states(items)

    def _full_sequence_states(self, items: list[tuple[list[int], int]]):
        """One forward pass over prompt + response per request (batched, right-padded)."""
        import torch

        decoder = self.model.get_decoder()
        for idx, batch in self._batches(items):
            ids, mask = self._padded([seq for seq, _ in batch])
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(idx):
                seq, n_prompt = batch[row]
                yield i, hidden[row, n_prompt - 1: len(seq) - 1], torch.tensor(seq[n_prompt:], device=self.device)

    def _shared_prompt_states(self, items: list[tuple[list[int], int]]):
        """Each distinct prompt runs once; its responses continue from its KV cache.

        A batch of `batch_size` distinct prompts (right-padded) fills the cache; then every
        response of those prompts runs as one batch over the cache rows of its prompt, with the
        prompt's padding masked out and positions continuing from the prompt's true length. The
        state at the prompt's last position predicts each response's first token. Same states as
        `_full_sequence_states` (up to float rounding), with the prompt's cost paid once: CHES
        scores a chosen and a rejected response per prompt, CDR every candidate of a prompt."""
        import torch

        decoder = self.model.get_decoder()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (seq, n_prompt) in enumerate(items):
            groups.setdefault(tuple(seq[:n_prompt]), []).append(i)
        prompts = sorted(groups, key=len)
        for k in range(0, len(prompts), self.batch_size):
            chunk = prompts[k: k + self.batch_size]
            ids, mask = self._padded([list(p) for p in chunk])
            out = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
            rows = [(j, i) for j, p in enumerate(chunk) for i in groups[p]]
            tails = [items[i][0][items[i][1]:] for _, i in rows]
            # the state predicting response token t > 0 is the output at response token t - 1
            feed = [t[:-1] for t in tails]
            later = None
            if any(feed):
                cache = out.past_key_values
                select = torch.tensor([j for j, _ in rows], device=self.device)
                cache.batch_select_indices(select)  # one cache row per response
                f_ids, f_mask = self._padded([f or [self.tokenizer.pad_token_id] for f in feed])
                f_mask[[r for r, f in enumerate(feed) if not f], 0] = 0
                lengths = torch.tensor([len(chunk[j]) for j, _ in rows], device=self.device)
                positions = lengths[:, None] + torch.arange(f_ids.shape[1], device=self.device)[None, :]
                later = decoder(input_ids=f_ids, attention_mask=torch.cat([mask[select], f_mask], 1),
                                position_ids=positions, past_key_values=cache,
                                use_cache=True).last_hidden_state
            first = out.last_hidden_state
            for r, (j, i) in enumerate(rows):
                n = len(tails[r])
                states = first[j, len(chunk[j]) - 1: len(chunk[j])]
                if later is not None and n > 1:
                    states = torch.cat([states, later[r, : n - 1]], 0)
                yield i, states[:n], torch.tensor(tails[r], device=self.device)

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
        release_memory()
