"""The ensemble annotator (`annotate.method: ensemble`): several scores of each response (strong and
weak log-probs of one density-ratio pass, summed and per token; the pointwise judge's rating; the
response's length) combined by weights fitted on human-labelled gold pairs. With
`annotate.safety_head` the head scores the prompts its router sends to it, as for the other methods,
and the ensemble is fitted on and scores the rest.

The model is Bradley-Terry with a linear score: P(A preferred) = sigmoid(w . (f(A) - f(B)) / s),
fitted by L2 logistic regression on the gold pairs without a tie, without intercept and on both
orders of every pair, so swapping A and B flips the verdict and the first position earns nothing.
`s` is the standard deviation of each feature's difference over the gold pairs (standardised
features; the weights are comparable). Accuracy is measured out of fold (stratified k-fold over
the pairs); the weights used for annotation are refitted on every pair. The same fit with the
length term dropped at prediction time is the length-controlled score (AlpacaEval's
length-controlled win rate does the same with its length term).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.annotate.config import JUDGE_FEATURE, RATIO_FEATURES, AnnotateConfig, route_criteria
from pipeline.annotate.density_ratio import DensityRatio, DensityRatioScore
from pipeline.annotate.judge import PointwiseJudge, RateItem, Rating
from pipeline.annotate.safety_head import Routes
from pipeline.engines.base import Engine
from pipeline.progress import Progress

FEATURES: dict[str, str] = {
    "cdr_sum": "log p_strong(y|x) - log p_weak(y|x), summed over the response",
    "cdr_tokens": "the same per token of each model",
    "strong_tokens": "mean log-prob per token under the strong model",
    "weak_tokens": "mean log-prob per token under the weak model",
    "judge": "the pointwise judge's rating (the expectation over its rating tokens, where it has log-probs)",
    "log_chars": "log(1 + characters of the response)",
}
LENGTH_FEATURE = "log_chars"


def response_features(response: str, ratio: DensityRatioScore | None = None,
                      judge: float | None = None) -> dict[str, float]:
    """The features of one response that its scores give: the density-ratio ones from `ratio`, the
    judge's from its rating `judge`, the length always."""
    out = {LENGTH_FEATURE: math.log1p(len(response))}
    if ratio is not None and ratio.strong_logprob is not None:
        strong = ratio.strong_logprob / max(ratio.strong_tokens, 1)
        weak = ratio.weak_logprob / max(ratio.weak_tokens, 1)
        out.update({"cdr_sum": ratio.strong_logprob - ratio.weak_logprob, "cdr_tokens": strong - weak,
                    "strong_tokens": strong, "weak_tokens": weak})
    if judge is not None:
        out[JUDGE_FEATURE] = judge
    return out


@dataclass
class Scored:
    """One response's scores for the ensemble: its features (None: not scored, routed to the safety
    head, or failed with `error`), the density-ratio score and the judge's rating it came from."""

    features: dict[str, float] | None = None
    ratio: DensityRatioScore | None = None
    rating: Rating | None = None
    error: str | None = None


def score_responses(config: AnnotateConfig, engines: Mapping[str, Engine], prompts: list[list[dict]],
                    responses: list[str], routes: Routes, on_batch: Progress | None = None,
                    every_route: bool = False, references: list[str | None] | None = None) -> list[Scored]:
    """The features `config.ensemble.features` of every response not routed to the safety head (of
    every response with `every_route`): one density-ratio pass and / or one pointwise-judge pass
    over them; `on_batch(responses done)` as the engines get through them."""
    names = config.ensemble.features
    todo = [i for i in range(len(responses)) if every_route or not routes.to_head[i]]
    steps = [s for s, used in (("ratio", any(f in RATIO_FEATURES for f in names)),
                               ("judge", JUDGE_FEATURE in names)) if used]
    if on_batch is not None and len(todo) < len(responses):
        on_batch(len(responses) - len(todo))
    share = (lambda done: on_batch(done / len(steps))) if on_batch is not None else None
    ratios, ratings = {}, {}
    if "ratio" in steps:
        sub = Routes(*([getattr(routes, k)[i] for i in todo] for k in ("heads", "p_safety", "to_head")))
        got = DensityRatio(engines["strong"], engines["weak"], config).score(
            [prompts[i] for i in todo], [responses[i] for i in todo], share, every_route=True, routes=sub)
        ratios = dict(zip(todo, got))
    if "judge" in steps:
        refs = references or [None] * len(responses)
        items = [RateItem(prompts[i], responses[i], refs[i], route_criteria(config.criteria, prompts[i])[1])
                 for i in todo]
        ratings = dict(zip(todo, PointwiseJudge(engines["judge"], config).rate(items, share)))
    out = [Scored() for _ in responses]
    for i in todo:
        rating = ratings.get(i)
        if rating is not None and rating.status != "ok":
            out[i] = Scored(None, ratios.get(i), rating, rating.error)
            continue
        feats = response_features(responses[i], ratios.get(i), None if rating is None else rating.score)
        out[i] = Scored({f: feats[f] for f in names}, ratios.get(i), rating)
    return out


def matrix(features: Sequence[Mapping[str, float] | None], names: Sequence[str]) -> np.ndarray:
    """One row per response, one column per feature; a row of NaN where a response has none."""
    return np.asarray([[np.nan] * len(names) if f is None else [f[n] for n in names] for f in features],
                      dtype=float).reshape(len(features), len(names))


def score(weights: Mapping, features: Mapping[str, float]) -> float:
    """A response's ensemble score: sum of weight * feature / scale (its `fit` weights)."""
    return float(sum(w * features[n] / s for n, w, s in
                     zip(weights["features"], weights["coefficients"], weights["scales"])))


def _fit(diff: np.ndarray, wins: np.ndarray, regularization: float) -> np.ndarray:
    """Coefficients of the no-intercept logistic regression on both orders of every pair."""
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([diff, -diff])
    y = np.concatenate([wins, ~wins]).astype(int)
    model = LogisticRegression(fit_intercept=False, C=regularization, max_iter=1000)
    return model.fit(x, y).coef_[0]


def verdicts(margins: np.ndarray, tie_margin: float = 0.0) -> list[str]:
    """a | b | tie per pair from score(A) - score(B); failed where the margin is not a number."""
    return ["failed" if not math.isfinite(m) else "tie" if abs(m) <= tie_margin else ("a" if m > 0 else "b")
            for m in margins]


def fit(features_a: np.ndarray, features_b: np.ndarray, labels: Sequence[str], names: Sequence[str],
        folds: int = 5, regularization: float = 1.0, seed: int = 0, tie_margin: float = 0.0) -> dict:
    """Weights fitted on every decisive gold pair, and out-of-fold verdicts of every pair (gold
    ties included: they get the verdict of the model fitted on the other folds' pairs) for the
    ensemble and, when `log_chars` is a feature, for its length-controlled form. A pair with a
    feature that is not a number (a judge output that did not parse) is never trained on and its
    verdict is failed.

    Returns {"weights": {...}, "verdicts": {"ensemble": [...], "length_controlled": [...]}}.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=object)
    diff_all = features_a - features_b
    usable = np.isfinite(diff_all).all(axis=1)
    decisive = np.flatnonzero((labels != "tie") & usable)
    if len(decisive) < 2 * folds:
        raise ValueError(f"ensemble: {len(decisive)} gold pairs without a tie; at least {2 * folds} "
                         f"are needed for {folds}-fold cross-validation")
    scales = diff_all[decisive].std(axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    z = diff_all / scales
    wins = labels == "a"
    length = list(names).index(LENGTH_FEATURE) if LENGTH_FEATURE in names else None
    oof = {"ensemble": np.zeros(len(labels))}
    if length is not None and len(names) > 1:
        oof["length_controlled"] = np.zeros(len(labels))
    fold_of = np.full(len(labels), -1)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(decisive, wins[decisive])):
        fold_of[decisive[test]] = k
    ties = np.flatnonzero((labels == "tie") | ~usable)
    fold_of[ties] = np.arange(len(ties)) % folds  # gold ties: spread over the folds, never trained on
    for k in range(folds):
        train = decisive[fold_of[decisive] != k]
        test = np.flatnonzero(fold_of == k)
        coef = _fit(z[train], wins[train], regularization)
        oof["ensemble"][test] = z[test] @ coef
        if "length_controlled" in oof:
            controlled = coef.copy()
            controlled[length] = 0.0
            oof["length_controlled"][test] = z[test] @ controlled
    coef = _fit(z[decisive], wins[decisive], regularization)
    weights = {"features": list(names), "coefficients": [float(c) for c in coef],
               "scales": [float(s) for s in scales], "folds": folds, "regularization": regularization,
               "pairs": int(len(labels)), "decisive_pairs": int(len(decisive)), "seed": seed}
    return {"weights": weights, "verdicts": {k: verdicts(v, tie_margin) for k, v in oof.items()}}
