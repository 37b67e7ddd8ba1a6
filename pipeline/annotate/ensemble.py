"""The ensemble annotator (`annotate.method: ensemble`): several scores of each response from one
density-ratio scoring pass (strong and weak log-probs, summed and per token, and the response's
length) combined by weights fitted on human-labelled gold pairs.

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

import numpy as np

from pipeline.annotate.density_ratio import DensityRatioScore

FEATURES: dict[str, str] = {
    "cdr_sum": "log p_strong(y|x) - log p_weak(y|x), summed over the response",
    "cdr_tokens": "the same per token of each model",
    "strong_tokens": "mean log-prob per token under the strong model",
    "weak_tokens": "mean log-prob per token under the weak model",
    "log_chars": "log(1 + characters of the response)",
}
LENGTH_FEATURE = "log_chars"


def response_features(s: DensityRatioScore, response: str) -> dict[str, float]:
    """Every feature of one response from its density-ratio score."""
    strong = s.strong_logprob / max(s.strong_tokens, 1)
    weak = s.weak_logprob / max(s.weak_tokens, 1)
    return {"cdr_sum": s.strong_logprob - s.weak_logprob, "cdr_tokens": strong - weak,
            "strong_tokens": strong, "weak_tokens": weak, "log_chars": math.log1p(len(response))}


def matrix(features: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.asarray([[f[n] for n in names] for f in features], dtype=float)


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
    """a | b | tie per pair from score(A) - score(B)."""
    return ["tie" if abs(m) <= tie_margin else ("a" if m > 0 else "b") for m in margins]


def fit(features_a: np.ndarray, features_b: np.ndarray, labels: Sequence[str], names: Sequence[str],
        folds: int = 5, regularization: float = 1.0, seed: int = 0, tie_margin: float = 0.0) -> dict:
    """Weights fitted on every decisive gold pair, and out-of-fold verdicts of every pair (gold
    ties included: they get the verdict of the model fitted on the other folds' pairs) for the
    ensemble and, when `log_chars` is a feature, for its length-controlled form.

    Returns {"weights": {...}, "verdicts": {"ensemble": [...], "length_controlled": [...]}}.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=object)
    diff_all = features_a - features_b
    decisive = np.flatnonzero(labels != "tie")
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
    ties = np.flatnonzero(labels == "tie")
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
