"""Customised density-ratio reward (CDR): r(x, y) = log p_strong(y | x, criteria) - log p_weak(y | x).

Both log-probs are teacher-forced sums over the response tokens (`Engine.score`), each under its
own model's tokenizer and chat format, so any two scoring engines pair up (the text is the same).
The criteria system prompt goes to the strong model only, chosen per prompt by the domain router.
With `annotate.safety_head`, prompts its router sends to the harmlessness head get the head's
reward instead (`route` says which scored; both numbers are kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.annotate import safety_head
from pipeline.annotate.config import AnnotateConfig, route_criteria
from pipeline.progress import Progress
from pipeline.engines.base import SCORE, Engine, ScoreRequest, TokenScores, require
from pipeline.engines.chat import message_tuples


@dataclass
class DensityRatioScore:
    reward: float
    strong_logprob: float | None  # None: routed to the safety head and not scored by the models
    weak_logprob: float | None
    strong_tokens: int | None
    weak_tokens: int | None
    domain: str | None
    route: str = "density_ratio"  # or "safety_head": the reward is the head's
    cdr: float | None = None  # the density ratio, when the models scored the response
    head: float | None = None  # the safety head's reward, when the recipe has one
    p_safety: float | None = None  # the router's P(red-team prompt)




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

    def score(self, prompts: list[list[dict]], responses: list[str], on_batch: Progress | None = None,
              every_route: bool = False, routes: safety_head.Routes | None = None) -> list[DensityRatioScore]:
        """Scores of every response; `on_batch(candidates)` as the two models get through them (half
        each). Responses the safety head scores skip the two models unless `every_route`; `routes`:
        `safety_head.route` of these responses when the caller has it already."""
        c = self.config
        n = len(responses)
        routes = routes or safety_head.route(c, prompts, responses)
        heads, p_safety, to_head = routes.heads, routes.p_safety, routes.to_head
        lm = [i for i in range(n) if every_route or not to_head[i]]
        if on_batch is not None and len(lm) < n:
            on_batch(n - len(lm))
        routed = [route_criteria(c.criteria, p) for p in prompts]
        strong = score_all(self.strong, [prompts[i] for i in lm], [responses[i] for i in lm],
                           [routed[i][1] for i in lm], c.batch_size, on_batch, 0.5)
        weak = score_all(self.weak, [prompts[i] for i in lm], [responses[i] for i in lm], [None] * len(lm),
                         c.batch_size, on_batch, 0.5)
        scored = {i: (s, w) for i, s, w in zip(lm, strong, weak)}
        out = []
        for i, r in enumerate(responses):
            s, w = scored.get(i, (None, None))
            cdr = None if s is None else density_ratio(s.total, s.num_tokens, w.total, w.num_tokens, r,
                                                       c.length_norm)
            out.append(DensityRatioScore(
                heads[i] if to_head[i] else cdr, None if s is None else s.total, None if w is None else w.total,
                None if s is None else s.num_tokens, None if w is None else w.num_tokens, routed[i][0],
                "safety_head" if to_head[i] else "density_ratio", cdr, heads[i], p_safety[i]))
        return out
