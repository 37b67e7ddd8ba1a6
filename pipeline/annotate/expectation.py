"""Expectation scoring (TrustJudge): the judge's rating as sum_s s * p(s) over the valid rating
tokens at the position where it wrote its rating, instead of the single token it sampled.

Engines return, per generated token, a dict {token text: log-prob} of the top-k alternatives.
The rating position is found by walking the greedy (highest-probability) tokens over the output
text; when they do not spell the text (sampled decoding, an engine without top-k) there is no
expectation and the caller keeps the argmax rating alone.
"""

from __future__ import annotations

import math
import re

_SPACE = re.compile(r"\s+")
_MARKS = str.maketrans("", "", "ĠĊ▁")  # byte-level / sentencepiece space markers in raw token strings


def token_label(token: str) -> str:
    """A token's text as a label: '\u0120 4' -> '4', '[[A]]' -> 'A'."""
    return _SPACE.sub("", token.translate(_MARKS)).strip("[]")


def _squeeze(text: str) -> str:
    return _SPACE.sub("", text.translate(_MARKS))


def position_of(top_logprobs: list[dict[str, float]] | None, text: str, char_offset: int) -> int | None:
    """Index of the generated token that covers character `char_offset` of `text`, or None."""
    if not top_logprobs:
        return None
    target = len(_squeeze(text[:char_offset]))
    squeezed_text = _squeeze(text)
    built = ""
    for i, alternatives in enumerate(top_logprobs):
        if not alternatives:
            return None
        token = _squeeze(max(alternatives, key=alternatives.get))
        if not squeezed_text.startswith(built + token):
            return None  # not the greedy path: no reliable position
        if len(built) <= target < len(built) + len(token):
            return i
        built += token
    return None


def label_distribution(alternatives: dict[str, float], labels: list[str]) -> tuple[dict[str, float], float]:
    """(p(label) renormalised over `labels`, probability mass the labels held before that)."""
    mass = {label: 0.0 for label in labels}
    for token, logprob in alternatives.items():
        label = token_label(token)
        if label in mass:
            mass[label] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0.0:
        return {}, 0.0
    return {label: p / total for label, p in mass.items()}, total


def expected_rating(alternatives: dict[str, float], rating_min: int, rating_max: int
                    ) -> tuple[float | None, float]:
    """(sum_s s * p(s) over valid ratings, their probability mass) at one token position."""
    labels = [str(s) for s in range(rating_min, rating_max + 1)]
    dist, mass = label_distribution(alternatives, labels)
    if not dist:
        return None, 0.0
    return sum(int(s) * p for s, p in dist.items()), mass


def first_wins_probability(alternatives: dict[str, float]) -> tuple[float | None, float]:
    """P(the first-shown response wins) = p(A) + p(C)/2 over the verdict tokens A/B/C."""
    dist, mass = label_distribution(alternatives, ["A", "B", "C"])
    if not dist:
        return None, 0.0
    return dist["A"] + 0.5 * dist["C"], mass
