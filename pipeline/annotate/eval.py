"""`prefpipe eval-annotator`: measure an annotator against gold preference labels before it is
trusted with a dataset.

For a pairwise judge one both-orders run yields three variants: single order (the (A,B) verdict
only), both orders (disagreement is a tie) and expectation (P(A wins) from verdict-token
log-probs, averaged over the orders). Pointwise judges, density ratios and reward models become
verdicts by comparing the two responses' scores. Each variant reports accuracy with gold ties
excluded and included, Cohen's kappa, position and length bias, failures, wall time, and
percentile-bootstrap confidence intervals.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.density_ratio import DensityRatio, density_ratio
from pipeline.annotate.gold import GoldPair
from pipeline.annotate.judge import PairItem, PairwiseJudge, PointwiseJudge, RateItem, verdict_from_probability
from pipeline.annotate.reward_model import RewardModel
from pipeline.engines.base import Engine

LABELS = ["a", "b", "tie", "failed"]


# --- configuration and engines -------------------------------------------------------------------

def open_engines(config: AnnotateConfig) -> dict[str, Engine]:
    """Load one engine per role the method needs (a model shared by two roles loads twice only
    when its engine settings differ)."""
    from pipeline.engines.registry import load_engine

    engines: dict[str, Engine] = {}
    loaded: dict[str, Engine] = {}
    for role in config.roles():
        ref = getattr(config.models, role)
        key = json.dumps(ref.model_dump(mode="json"), sort_keys=True)
        if key not in loaded:
            loaded[key] = load_engine(ref.model, ref.engine, **ref.options)
        engines[role] = loaded[key]
    return engines


# --- running the annotator on gold pairs -----------------------------------------------------------

def _score_verdicts(a: list[float | None], b: list[float | None], margin: float) -> list[str]:
    out = []
    for x, y in zip(a, b):
        if x is None or y is None:
            out.append("failed")
        else:
            out.append("tie" if abs(x - y) <= margin else ("a" if x > y else "b"))
    return out


def run_annotator(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair]
                  ) -> dict[str, dict]:
    """{variant: {"verdicts": [a|b|tie|failed], "seconds": s, ...}} for the gold pairs."""
    variants: dict[str, dict] = {}
    if config.method == "judge_pairwise":
        judge = PairwiseJudge(engines["judge"], config)
        items = [PairItem(p.prompt, p.response_a, p.response_b) for p in pairs]
        t0 = time.perf_counter()
        ab = judge.judge_order(items, swapped=False)
        t_ab = time.perf_counter() - t0
        single = [judge.combine(x, None) for x in ab]
        variants["single_order"] = {"verdicts": [c.verdict_ab or "failed" for c in single], "seconds": t_ab}
        both = None
        if config.both_orders:
            t0 = time.perf_counter()
            ba = judge.judge_order(items, swapped=True)
            t_ba = time.perf_counter() - t0
            both = [judge.combine(x, y) for x, y in zip(ab, ba)]
            flips = [c.flipped for c in both if c.flipped is not None]
            variants["both_orders"] = {
                "verdicts": [("failed" if c.status != "ok" else
                              c.verdict_ab if c.verdict_ab == c.verdict_ba else "tie") for c in both],
                "seconds": t_ab + t_ba,
                "flip_rate": sum(flips) / len(flips) if flips else None}
        source = both if both is not None else single
        if any(c.p_a_wins is not None for c in source):
            variants["expectation"] = {
                "verdicts": [verdict_from_probability(c.p_a_wins, config.expectation_tie_band)
                             if c.p_a_wins is not None else "failed" for c in source],
                "seconds": t_ab + (t_ba if both is not None else 0.0),
                "p_a_wins": [c.p_a_wins for c in source]}
    elif config.method == "judge_pointwise":
        judge = PointwiseJudge(engines["judge"], config)
        t0 = time.perf_counter()
        ratings = judge.rate([RateItem(p.prompt, r) for p in pairs for r in (p.response_a, p.response_b)])
        seconds = time.perf_counter() - t0
        ra, rb = ratings[0::2], ratings[1::2]
        variants["pointwise_argmax"] = {"verdicts": _score_verdicts(
            [r.score_argmax for r in ra], [r.score_argmax for r in rb], config.tie_margin), "seconds": seconds}
        if any(r.score_expectation is not None for r in ratings):
            variants["pointwise_expectation"] = {"verdicts": _score_verdicts(
                [r.score_expectation for r in ra], [r.score_expectation for r in rb], config.tie_margin),
                "seconds": seconds}
    else:
        t0 = time.perf_counter()
        prompts = [p.prompt for p in pairs for _ in (0, 1)]
        responses = [r for p in pairs for r in (p.response_a, p.response_b)]
        by_variant: dict[str, list[float]] = {}
        if config.method == "density_ratio":
            results = DensityRatio(engines["strong"], engines["weak"], config).score(prompts, responses)
            by_variant[config.method] = [s.reward for s in results]
            # the other length normalisations come from the same log-probs, at no extra cost
            for norm in ("none", "tokens", "chars"):
                if norm != config.length_norm:
                    by_variant[f"{config.method}[length_norm={norm}]"] = [
                        density_ratio(s.strong_logprob, s.strong_tokens, s.weak_logprob, s.weak_tokens,
                                      r, norm) for s, r in zip(results, responses)]
        else:
            by_variant[config.method] = RewardModel(engines["reward"], config.batch_size).score(
                prompts, responses)
        seconds = time.perf_counter() - t0
        for name, scores in by_variant.items():
            scores = [s if np.isfinite(s) else None for s in scores]
            variants[name] = {"verdicts": _score_verdicts(scores[0::2], scores[1::2], config.tie_margin),
                              "seconds": seconds, "scores": scores}
    return variants


# --- statistics -----------------------------------------------------------------------------------

def cohen_kappa(gold: np.ndarray, pred: np.ndarray) -> float:
    """Cohen's kappa over LABELS (sklearn's definition, without its per-call validation cost,
    which dominates a 1000-resample bootstrap); nan when undefined (chance agreement 1)."""
    index = {label: i for i, label in enumerate(LABELS)}
    k = len(LABELS)
    g = np.fromiter((index[x] for x in gold), int, len(gold))
    p = np.fromiter((index[x] for x in pred), int, len(pred))
    if len(g) == 0:
        return float("nan")
    confusion = np.bincount(g * k + p, minlength=k * k).reshape(k, k) / len(g)
    observed = np.trace(confusion)
    expected = float(confusion.sum(1) @ confusion.sum(0))
    return float("nan") if expected == 1.0 else float((observed - expected) / (1.0 - expected))


def _accuracy(gold: np.ndarray, pred: np.ndarray, exclude_ties: bool) -> float:
    keep = gold != "tie" if exclude_ties else np.ones(len(gold), bool)
    return float(np.mean(pred[keep] == gold[keep])) if keep.any() else float("nan")


def _bootstrap(stat, n: int, resamples: int, seed: int) -> list[float | None]:
    """95% percentile interval of `stat(indices)` over resampled pairs."""
    if n < 2 or resamples < 1:
        return [None, None]
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # a degenerate distribution gives a point interval or null
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n),), stat, vectorized=False, n_resamples=resamples,
                        method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return [None if np.isnan(lo) else float(lo), None if np.isnan(hi) else float(hi)]


def _longer_win_rate(labels: np.ndarray, len_a: np.ndarray, len_b: np.ndarray) -> float | None:
    decided = np.isin(labels, ["a", "b"]) & (len_a != len_b)
    if not decided.any():
        return None
    longer = np.where(len_a > len_b, "a", "b")
    return float(np.mean(labels[decided] == longer[decided]))


def metrics(gold: list[str], pred: list[str], len_a: list[int], len_b: list[int],
            resamples: int = 1000, seed: int = 0) -> dict:
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    la, lb = np.asarray(len_a), np.asarray(len_b)
    valid = p != "failed"
    non_tie_gold = g != "tie"
    decisive = non_tie_gold & np.isin(p, ["a", "b"])
    out = {
        "pairs": len(g),
        "gold_ties": int((~non_tie_gold).sum()),
        "failed": int((~valid).sum()),
        "predicted": dict(Counter(p.tolist())),
        "accuracy_excluding_ties": _accuracy(g, p, exclude_ties=True),
        "accuracy_including_ties": _accuracy(g, p, exclude_ties=False),
        "decisive_accuracy": float(np.mean(p[decisive] == g[decisive])) if decisive.any() else None,
        "cohen_kappa": cohen_kappa(g, p),
        "first_position_win_rate": float(np.mean(p[valid] == "a")) if valid.any() else None,
        "longer_response_win_rate": _longer_win_rate(p, la, lb),
        "gold_longer_response_win_rate": _longer_win_rate(g, la, lb),
    }
    n = len(g)
    out["ci95"] = {
        "accuracy_excluding_ties": _bootstrap(lambda i: _accuracy(g[i], p[i], True), n, resamples, seed),
        "accuracy_including_ties": _bootstrap(lambda i: _accuracy(g[i], p[i], False), n, resamples, seed),
        "cohen_kappa": _bootstrap(lambda i: cohen_kappa(g[i], p[i]), n, resamples, seed),
    }
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}


def evaluate_annotator(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair],
                       resamples: int = 1000) -> dict:
    """The eval-annotator report (a JSON-able dict) for `pairs`."""
    from pipeline.annotate.stage import annotator_name

    gold = [p.label for p in pairs]
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    variants = {}
    for name, run in run_annotator(config, engines, pairs).items():
        m = metrics(gold, run["verdicts"], la, lb, resamples, config.seed)
        m["seconds"] = round(run["seconds"], 2)
        m["seconds_per_pair"] = round(run["seconds"] / max(len(pairs), 1), 3)
        if "flip_rate" in run:
            m["flip_rate"] = run["flip_rate"]
        if "p_a_wins" in run:  # per pair, to choose expectation_tie_band
            m["p_a_wins"] = [None if x is None else round(x, 4) for x in run["p_a_wins"]]
        variants[name] = m
    return {
        "annotator": annotator_name(config, engines),
        "method": config.method,
        "models": {role: engines[role].model_id for role in config.roles()},
        "config": config.model_dump(mode="json"),
        "gold_labels": dict(Counter(gold)),
        "variants": variants,
    }


def _fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def to_markdown(report: dict) -> str:
    g = report.get("gold", {})
    lines = [f"# eval-annotator: {report['annotator']}", "",
             f"Gold: `{g.get('path', '?')}` ({g.get('pairs', '?')} pairs, labels {report['gold_labels']}, "
             f"sample seed {g.get('seed', '-')}, rows not usable: {g.get('rejected', {})})", "",
             "| variant | acc. excl. ties [95% CI] | acc. incl. ties [95% CI] | Cohen's kappa [95% CI] | "
             "flip rate | first-position win | longer wins (gold) | failed | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["variants"].items():
        ci = m["ci95"]
        lines.append(
            f"| {name} | {_fmt(m['accuracy_excluding_ties'], ci['accuracy_excluding_ties'])} | "
            f"{_fmt(m['accuracy_including_ties'], ci['accuracy_including_ties'])} | "
            f"{_fmt(m['cohen_kappa'], ci['cohen_kappa'])} | {_fmt(m.get('flip_rate'))} | "
            f"{_fmt(m['first_position_win_rate'])} | {_fmt(m['longer_response_win_rate'])} "
            f"({_fmt(m['gold_longer_response_win_rate'])}) | {m['failed']} | {m['seconds']} |")
    lines += ["", "Accuracy excluding ties: over pairs whose gold label is not a tie (a predicted tie "
              "counts as wrong). First-position win: share of verdicts for the response shown first "
              "(response A). Failed judge outputs count as wrong."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "eval-annotator.json", out_dir / "eval-annotator.md"
    js.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    md.write_text(to_markdown(report))
    return js, md
