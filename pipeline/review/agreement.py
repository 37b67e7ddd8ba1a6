"""Agreement maths of a human review: the published pair direction against the humans, and
reviewers against each other.

Labels are put in eval-annotator's terms (`a | b | tie` for a pair shown as A, B): A is the
published chosen or rejected by a coin per pair id, as `eval-annotator` orients chosen/rejected
gold files, so Cohen's kappa is defined although the pipeline always "says chosen". Accuracy
excludes human ties; intervals are 95% percentile bootstraps (pipeline.annotate.eval). Several
reviewers of one pair give its consensus: the label most of them gave, a tie when none leads.

The sample over-represents small and flagged strata, so the version-wide estimate weights each
stratum's accuracy by its share of the version's pairs (`accuracy_weighted`, post-stratified; its
interval a bootstrap of that estimator).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import numpy as np

RESAMPLES = 1000


@dataclass(frozen=True)
class Judged:
    """One pair with its human consensus (chosen | rejected | tie) and where it comes from."""
    pair_id: str
    human: str
    stratum: str
    source: str | None
    length_chosen: int = 0
    length_rejected: int = 0


def a_is_chosen(pair_id: str) -> bool:
    return random.Random(f"ab:{pair_id}").random() < 0.5


def oriented(preferred: str, pair_id: str) -> str:
    """chosen | rejected | tie -> a | b | tie in the pair's fixed A/B orientation."""
    if preferred == "tie":
        return "tie"
    return "a" if (preferred == "chosen") == a_is_chosen(pair_id) else "b"


def consensus(labels: list[str]) -> str:
    """The label most reviewers gave (chosen | rejected | tie); a tie when two lead equally."""
    counts = Counter(labels).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def direction_agreement(items: list[Judged], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """How often the humans prefer the published chosen: accuracy excluding human ties, Cohen's
    kappa, their bootstrap CIs, and the humans' own longer-response win rate."""
    from pipeline.annotate.eval import metrics

    if not items:
        return {"pairs": 0, "human_ties": 0, "agree": 0, "accuracy_excluding_ties": None, "cohen_kappa": None,
                "ci95": {"accuracy_excluding_ties": [None, None], "cohen_kappa": [None, None]},
                "human_longer_response_win_rate": None}
    gold = [oriented(j.human, j.pair_id) for j in items]
    pred = [oriented("chosen", j.pair_id) for j in items]
    len_a = [j.length_chosen if a_is_chosen(j.pair_id) else j.length_rejected for j in items]
    len_b = [j.length_rejected if a_is_chosen(j.pair_id) else j.length_chosen for j in items]
    m = metrics(gold, pred, len_a, len_b, resamples, seed)
    return _clean({
        "pairs": m["pairs"], "human_ties": m["gold_ties"], "agree": sum(j.human == "chosen" for j in items),
        "accuracy_excluding_ties": m["accuracy_excluding_ties"], "cohen_kappa": m["cohen_kappa"],
        "ci95": {k: m["ci95"][k] for k in ("accuracy_excluding_ties", "cohen_kappa")},
        "human_longer_response_win_rate": m["gold_longer_response_win_rate"],
    })


def weighted_accuracy(items: list[Judged], population: dict[str, int], resamples: int = RESAMPLES,
                      seed: int = 0) -> tuple[float | None, list[float | None]]:
    """(sum over strata of share * accuracy excluding ties, its 95% bootstrap CI): the shares are
    the version's pair counts per stratum, over the strata with a decisive label. Each resample
    draws the decisive labels with replacement and re-weights the strata it holds, so a stratum of
    one label widens the interval instead of counting as certain."""
    decisive = [j for j in items if j.human != "tie"]
    if not decisive:
        return None, [None, None]
    names = sorted({j.stratum for j in decisive})
    code = np.asarray([names.index(j.stratum) for j in decisive])
    right = np.asarray([j.human == "chosen" for j in decisive], float)
    weight = np.asarray([population.get(s, 0) for s in names], float)
    weight = weight / weight.sum() if weight.sum() else np.full(len(names), 1 / len(names))

    def estimate(idx: np.ndarray) -> np.ndarray:  # one value per row of idx
        num, den = np.zeros(idx.shape[0]), np.zeros(idx.shape[0])
        for h, w in enumerate(weight):
            member = code[idx] == h
            n = member.sum(1)
            mean = np.divide((right[idx] * member).sum(1), n, out=np.zeros(len(n)), where=n > 0)
            num += w * mean * (n > 0)
            den += w * (n > 0)
        return num / den

    point = float(estimate(np.arange(len(decisive))[None, :])[0])
    if resamples < 1 or len(decisive) < 2:
        return point, [None, None]
    draws = estimate(np.random.default_rng(seed).integers(0, len(decisive), size=(resamples, len(decisive))))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, [float(lo), float(hi)]


def reviewer_agreement(by_reviewer: dict[str, dict[str, str]], resamples: int = RESAMPLES,
                       seed: int = 0) -> list[dict]:
    """Per pair of reviewers, over the pairs both labelled (skips aside): raw agreement and
    Cohen's kappa (with its bootstrap CI) over a | b | tie."""
    from pipeline.annotate.eval import bootstrap_ci, cohen_kappa, kappa_resampled, resample_indices

    out = []
    for r1, r2 in combinations(sorted(by_reviewer), 2):
        common = sorted(set(by_reviewer[r1]) & set(by_reviewer[r2]))
        x = np.asarray([oriented(by_reviewer[r1][p], p) for p in common], dtype=object)
        y = np.asarray([oriented(by_reviewer[r2][p], p) for p in common], dtype=object)
        kappa = cohen_kappa(x, y) if common else float("nan")
        idx = resample_indices(len(common), resamples, seed)
        out.append(_clean({"reviewers": [r1, r2], "pairs": len(common),
                           "agreement": float(np.mean(x == y)) if common else None,
                           "cohen_kappa": kappa,
                           "kappa_ci95": bootstrap_ci(lambda i: kappa_resampled(x, y, i), idx)}))
    return out
