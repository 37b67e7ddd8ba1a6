"""Customised density-ratio reward (CDR): r(x, y) = log p_strong(y | x, criteria) - log p_weak(y | x).

Both log-probs are teacher-forced sums over the response tokens (`Engine.score`), each under its
own model's tokenizer and chat format, so any two scoring engines pair up (the text is the same).
The criteria system prompt goes to the strong model only, chosen per prompt by the domain router.
With `annotate.safety_head`, prompts its router sends to the harmlessness head get the head's
reward instead (`route` says which scored; both numbers are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.annotate.config import AnnotateConfig, route_criteria
from pipeline.engines.base import SCORE, Engine, ScoreRequest, TokenScores, require
from pipeline.engines.chat import message_tuples


@dataclass
class DensityRatioScore:
    reward: float
    strong_logprob: float
    weak_logprob: float
    strong_tokens: int
    weak_tokens: int
    domain: str | None
    route: str = "density_ratio"  # or "safety_head": the reward is the head's
    cdr: float | None = None  # the density ratio, whichever route scored
    head: float | None = None  # the safety head's reward, when the recipe has one
    p_safety: float | None = None  # the router's P(red-team prompt)


Progress = Callable[[float], None]  # called with the share of candidates each batch finished


def _batched(engine: Engine, requests: list[ScoreRequest], size: int, on_batch: Progress | None = None,
             weight: float = 1.0) -> list[TokenScores]:
    out: list[TokenScores] = []
    for start in range(0, len(requests), size):
        out += engine.score(requests[start:start + size])
        if on_batch is not None:
            on_batch(weight * len(requests[start:start + size]))
    return out


def score_all(engine: Engine, prompts: list[list[dict]], responses: list[str],
              systems: list[str | None], batch_size: int, on_batch: Progress | None = None,
              weight: float = 1.0) -> list[TokenScores]:
    """Teacher-forced log-probs of every response under `engine` (system prompt per request);
    `on_batch(weight * requests done)` after each batch."""
    return _batched(engine, [ScoreRequest(prompt=message_tuples(p), response=r, system=s)
                             for p, r, s in zip(prompts, responses, systems)], batch_size, on_batch, weight)


def density_ratio(strong_logprob: float, strong_tokens: int, weak_logprob: float, weak_tokens: int,
                  response: str, length_norm: str) -> float:
    """log p_strong(y|x) - log p_weak(y|x), per token of each model (`tokens`), per character
    (`chars`) or summed (`none`)."""
    if length_norm == "tokens":
        return strong_logprob / max(strong_tokens, 1) - weak_logprob / max(weak_tokens, 1)
    diff = strong_logprob - weak_logprob
    return diff / max(len(response), 1) if length_norm == "chars" else diff


class DensityRatio:
    def __init__(self, strong: Engine, weak: Engine, config: AnnotateConfig):
        for role, engine in (("strong", strong), ("weak", weak)):
            require(f"{role} ({engine.model_id})", engine.capabilities, {SCORE})
        self.strong, self.weak, self.config = strong, weak, config

    def score(self, prompts: list[list[dict]], responses: list[str], on_batch: Progress | None = None
              ) -> list[DensityRatioScore]:
        """Scores of every response; `on_batch(candidates)` as the two models get through them (half each)."""
        c = self.config
        routed = [route_criteria(c.criteria, p) for p in prompts]
        strong = score_all(self.strong, prompts, responses, [criteria for _, criteria in routed],
                           c.batch_size, on_batch, 0.5)
        weak = score_all(self.weak, prompts, responses, [None] * len(prompts), c.batch_size, on_batch, 0.5)
        out = []
        for s, w, r, (domain, _) in zip(strong, weak, responses, routed):
            cdr = density_ratio(s.total, s.num_tokens, w.total, w.num_tokens, r, c.length_norm)
            out.append(DensityRatioScore(cdr, s.total, w.total, s.num_tokens, w.num_tokens, domain, cdr=cdr))
        if c.safety_head is not None:
            from pipeline.annotate import safety_head

            head = safety_head.load(c.safety_head.path, c.safety_head.threshold)
            for x, h, p in zip(out, head.scores(responses), head.p_safety(prompts)):
                x.head, x.p_safety = float(h), float(p)
                if p >= head.threshold:
                    x.reward, x.route = float(h), "safety_head"
        return out
