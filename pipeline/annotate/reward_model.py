"""Sequence-classification reward models: one scalar per (prompt, response) from `Engine.reward`
(the transformers engine, or an HTTP server that exposes a reward endpoint)."""

from __future__ import annotations

from pipeline.engines.chat import message_tuples
from pipeline.engines.base import REWARD, Engine, ScoreRequest, require


class RewardModel:
    def __init__(self, engine: Engine, batch_size: int = 32):
        require(engine.model_id, engine.capabilities, {REWARD})
        self.engine, self.batch_size = engine, batch_size

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        requests = [ScoreRequest(prompt=message_tuples(p), response=r) for p, r in zip(prompts, responses)]
        out: list[float] = []
        for start in range(0, len(requests), self.batch_size):
            out += [float(x) for x in self.engine.reward(requests[start:start + self.batch_size])]
        return out
