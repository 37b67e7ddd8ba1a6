"""LLM judges: pointwise ratings (overall or per aspect, UltraFeedback style) and pairwise verdicts
in both orders (a disagreement between the orders is a tie).

Outputs are parsed strictly (`parsing`); an unparseable output is asked again up to
`config.retries` times with a new seed at `retry_temperature`, then recorded as failed with its
raw text. Where the engine returns top-k log-probs the expectation over the rating / verdict
tokens is kept beside the argmax (`expectation`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.annotate.config import ASPECTS, AnnotateConfig
from pipeline.annotate.expectation import expected_rating, first_wins_probability, position_of
from pipeline.annotate.parsing import ParseError, Parsed, parse_rating, parse_verdict
from pipeline.annotate.templates import load_template, render_conversation
from pipeline.progress import Progress
from pipeline.engines.base import TOP_LOGPROBS, ChatRequest, Completion, Engine, SamplingParams

UNPARSEABLE = "unparseable_judge_output"


@dataclass
class Answer:
    """One judge question after retries: the parse (or the last error) and every attempt's seed."""

    parsed: Parsed | None = None
    completion: Completion | None = None
    raw: str = ""
    error: str | None = None
    seeds: list[int] = field(default_factory=list)


def ask(engine: Engine, prompts: list[str], parse: Callable[[str], Parsed], config: AnnotateConfig,
        on_batch: Progress | None = None, weight: float = 1.0) -> list[Answer]:
    """Send each prompt as one user turn; re-ask those whose output does not parse.
    `on_batch(weight * prompts answered)` after each first-attempt batch (re-asks add no progress)."""
    logprobs = config.top_logprobs if config.expectation and TOP_LOGPROBS in engine.capabilities else None
    answers = [Answer() for _ in prompts]
    pending = list(range(len(prompts)))
    for attempt in range(config.retries + 1):
        if not pending:
            break
        seed = config.seed + attempt
        params = SamplingParams(
            n=1, temperature=config.temperature if attempt == 0 else config.retry_temperature,
            max_tokens=config.max_tokens, seed=seed, logprobs=logprobs)
        still = []
        for start in range(0, len(pending), config.batch_size):
            batch = pending[start:start + config.batch_size]
            outs = engine.generate([ChatRequest(messages=(("user", prompts[i]),), params=params)
                                    for i in batch])
            for i, out in zip(batch, outs):
                completion = out[0]
                answer = answers[i]
                answer.seeds.append(seed)
                answer.raw, answer.completion = completion.text, completion
                try:
                    answer.parsed, answer.error = parse(completion.text), None
                except ParseError as err:
                    answer.error = str(err)
                    still.append(i)
            if attempt == 0 and on_batch is not None:
                on_batch(weight * len(batch))
        pending = still
    return answers


def _token_alternatives(answer: Answer) -> dict[str, float] | None:
    c, p = answer.completion, answer.parsed
    if c is None or p is None or not c.top_logprobs:
        return None
    pos = position_of(c.top_logprobs, c.text, p.start)
    return None if pos is None else c.top_logprobs[pos]


# --- pointwise ---------------------------------------------------------------------------------

@dataclass
class RateItem:
    prompt: list[dict]  # chat messages up to the last user turn
    response: str
    reference: str | None = None
    criteria: str | None = None


@dataclass
class Rating:
    status: str  # ok | failed
    score: float | None = None
    score_argmax: float | None = None
    score_expectation: float | None = None
    aspects: dict = field(default_factory=dict)  # {aspect: {rating, expectation, mass}}
    rationale: str | None = None
    raw: str = ""
    error: str | None = None
    seeds: list[int] = field(default_factory=list)


class PointwiseJudge:
    def __init__(self, engine: Engine, config: AnnotateConfig):
        self.engine, self.config = engine, config
        self.template = load_template("pointwise", config.templates.pointwise)
        self.aspects = list(config.aspects) or [None]

    def prompt(self, item: RateItem, aspect: str | None) -> str:
        c = self.config
        return self.template.render(
            {"conversation": render_conversation(item.prompt), "response": item.response,
             "reference": item.reference},
            aspect=aspect.replace("_", " ") if aspect else None,
            aspect_description=ASPECTS.get(aspect, aspect) if aspect else None,
            criteria=item.criteria, rating_min=c.rating_min, rating_max=c.rating_max,
            rationale=c.rationale)

    def rate(self, items: list[RateItem], on_batch: Progress | None = None) -> list[Rating]:
        """A rating of each item; `on_batch(items done)` as the batches finish."""
        c = self.config
        questions = [(i, a) for i in range(len(items)) for a in self.aspects]
        answers = ask(self.engine, [self.prompt(items[i], a) for i, a in questions],
                      lambda t: parse_rating(t, c.rating_min, c.rating_max), c, on_batch, 1 / len(self.aspects))
        per_item: list[list[tuple[str | None, Answer]]] = [[] for _ in items]
        for (i, aspect), answer in zip(questions, answers):
            per_item[i].append((aspect, answer))
        return [self._combine(parts) for parts in per_item]

    def _combine(self, parts: list[tuple[str | None, Answer]]) -> Rating:
        c = self.config
        raw = parts[0][1].raw if len(parts) == 1 else json.dumps({a: x.raw for a, x in parts})
        seeds = sorted({s for _, x in parts for s in x.seeds})
        failed = [(a, x) for a, x in parts if x.parsed is None]
        if failed:
            aspect, answer = failed[0]
            where = f" (aspect {aspect})" if aspect else ""
            return Rating("failed", raw=raw, error=f"{UNPARSEABLE}: {answer.error}{where}", seeds=seeds)
        aspects, argmaxes, expectations = {}, [], []
        for aspect, answer in parts:
            alternatives = _token_alternatives(answer)
            exp, mass = (expected_rating(alternatives, c.rating_min, c.rating_max)
                         if alternatives else (None, 0.0))
            argmaxes.append(float(answer.parsed.value))
            expectations.append(exp)
            aspects[aspect or "overall"] = {"rating": int(answer.parsed.value), "expectation": exp,
                                            "mass": round(mass, 6),
                                            "rationale": answer.parsed.rationale}
        argmax = sum(argmaxes) / len(argmaxes)
        expectation = (sum(expectations) / len(expectations)
                       if all(e is not None for e in expectations) else None)
        rationale = "\n".join(f"{a}: {v['rationale']}" if len(parts) > 1 else v["rationale"]
                              for a, v in aspects.items()) or None
        score = expectation if (c.expectation and expectation is not None) else argmax
        return Rating("ok", score=score, score_argmax=argmax, score_expectation=expectation,
                      aspects=aspects, rationale=rationale, raw=raw, seeds=seeds)


# --- pairwise ----------------------------------------------------------------------------------

@dataclass
class PairItem:
    prompt: list[dict]
    response_a: str
    response_b: str
    reference: str | None = None
    criteria: str | None = None


FROM_AB = {"A": "a", "B": "b", "C": "tie"}  # verdict tokens with a shown first
FROM_BA = {"A": "b", "B": "a", "C": "tie"}  # ... with b shown first


@dataclass
class Comparison:
    """Both orders of one pair. verdict_ab / verdict_ba name the winning *candidate* (a | b | tie),
    so they agree exactly when the judge is consistent under the swap."""

    status: str  # ok | failed
    verdict: str | None = None  # final: a | b | tie
    verdict_ab: str | None = None  # a shown first
    verdict_ba: str | None = None  # b shown first
    p_a_ab: float | None = None  # P(a wins) from the verdict-token probabilities, a shown first
    p_a_ba: float | None = None
    p_a_wins: float | None = None  # mean over the orders judged
    raw_ab: str = ""
    raw_ba: str = ""
    rationale: str | None = None
    error: str | None = None
    seeds: list[int] = field(default_factory=list)

    @property
    def flipped(self) -> bool | None:
        if self.verdict_ab is None or self.verdict_ba is None:
            return None
        return self.verdict_ab != self.verdict_ba


def verdict_from_probability(p: float, band: float) -> str:
    return "tie" if abs(p - 0.5) <= band else ("a" if p > 0.5 else "b")


class PairwiseJudge:
    def __init__(self, engine: Engine, config: AnnotateConfig):
        self.engine, self.config = engine, config
        self.template = load_template("pairwise", config.templates.pairwise)

    def prompt(self, item: PairItem, first: str, second: str) -> str:
        return self.template.render(
            {"conversation": render_conversation(item.prompt), "response_a": first,
             "response_b": second, "reference": item.reference},
            criteria=item.criteria, rationale=self.config.rationale)

    def judge_order(self, items: list[PairItem], swapped: bool, on_batch: Progress | None = None,
                    weight: float = 1.0) -> list[Answer]:
        prompts = [self.prompt(it, it.response_b, it.response_a) if swapped
                   else self.prompt(it, it.response_a, it.response_b) for it in items]
        return ask(self.engine, prompts, parse_verdict, self.config, on_batch, weight)

    def compare(self, items: list[PairItem], both_orders: bool | None = None,
                on_batch: Progress | None = None) -> list[Comparison]:
        """Each pair's verdict; `on_batch(pairs done)` as the batches of every order finish."""
        both = self.config.both_orders if both_orders is None else both_orders
        share = 0.5 if both else 1.0
        ab = self.judge_order(items, swapped=False, on_batch=on_batch, weight=share)
        ba = self.judge_order(items, swapped=True, on_batch=on_batch, weight=share) if both else [None] * len(items)
        return [self.combine(x, y) for x, y in zip(ab, ba)]

    def combine(self, ab: Answer, ba: Answer | None) -> Comparison:
        c = self.config
        comp = Comparison("ok", raw_ab=ab.raw, raw_ba=ba.raw if ba else "",
                          seeds=sorted(set(ab.seeds) | set(ba.seeds if ba else [])))
        errors = [f"{o}: {x.error}" for o, x in (("ab", ab), ("ba", ba)) if x is not None and x.parsed is None]
        if ab.parsed:
            comp.verdict_ab = FROM_AB[ab.parsed.value]
            comp.rationale = ab.parsed.rationale or None
            alt = _token_alternatives(ab)
            comp.p_a_ab = first_wins_probability(alt)[0] if alt else None
        if ba is not None and ba.parsed:
            comp.verdict_ba = FROM_BA[ba.parsed.value]
            alt = _token_alternatives(ba)
            p_first = first_wins_probability(alt)[0] if alt else None
            comp.p_a_ba = None if p_first is None else 1.0 - p_first
        if errors:
            comp.status, comp.error = "failed", f"{UNPARSEABLE}: " + "; ".join(errors)
            return comp
        probs = [p for p in (comp.p_a_ab, comp.p_a_ba) if p is not None]
        if len(probs) == (2 if ba is not None else 1):
            comp.p_a_wins = sum(probs) / len(probs)
        if c.expectation and comp.p_a_wins is not None:
            comp.verdict = verdict_from_probability(comp.p_a_wins, c.expectation_tie_band)
        elif ba is None or comp.verdict_ab == comp.verdict_ba:
            comp.verdict = comp.verdict_ab
        else:
            comp.verdict = "tie"
        return comp
