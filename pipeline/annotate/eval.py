"""`prefpipe eval-annotator`: measure an annotator against gold preference labels before it is
trusted with a dataset.

For a pairwise judge one both-orders run yields three variants: single order (the (A,B) verdict
only), both orders (disagreement is a tie) and expectation (P(A wins) from verdict-token
log-probs, averaged over the orders). Pointwise judges, density ratios and reward models become
verdicts by comparing the two responses' scores. Each variant reports accuracy with gold ties
excluded and included, Cohen's kappa, position and length bias, failures, wall time, and
percentile-bootstrap confidence intervals; every interval of a report is computed from the same
resampled pair indices, so differences are paired. Trivial baselines on the same pairs and the
verdict against the best of them come from `baselines`.

Engine requests go through `CachedEngine`: with a cache directory every generate / score / reward
result is stored by content (engine kind, model, engine options, call, request: prompt, response,
criteria system prompt, sampling parameters), so a rerun or another length normalisation asks the
engines nothing; a progress bar shows the requests left and the ETA.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.annotate import ensemble, safety_head
from pipeline.annotate.config import AnnotateConfig, route_criteria
from pipeline.annotate.density_ratio import DensityRatio, density_ratio
from pipeline.annotate.gold import GoldPair
from pipeline.annotate.judge import PairItem, PairwiseJudge, PointwiseJudge, RateItem, verdict_from_probability
from pipeline.annotate.reward_model import RewardModel
from pipeline import progress
from pipeline.cache import RequestCache
from pipeline.engines.base import ChatRequest, Completion, Engine, ScoreRequest, TokenScores
from pipeline.filters.length import LengthConfig
from pipeline.ids import content_id

LABELS = ["a", "b", "tie", "failed"]
SCORE_CACHE = "scores.sqlite"


def build_score_cache(work_root: Path) -> Path:
    """Where a build's gold-pair scores are cached (the annotator gate and the ensemble fit share it:
    a gold pair both use is scored once)."""
    return Path(work_root) / "cache"


# --- configuration and engines -------------------------------------------------------------------

def annotator_engines(config: AnnotateConfig) -> dict[str, Engine]:
    """One engine per role the method needs (roles on the same model and settings share one)."""
    from pipeline.engines.registry import open_engines

    return open_engines({role: (getattr(config.models, role).model, getattr(config.models, role).engine,
                                getattr(config.models, role).options) for role in config.roles()})


# --- progress and the score cache ------------------------------------------------------------------

class RequestMeter:
    """Engine requests left to run, with elapsed time and ETA: a rich bar on a terminal, else a line
    on stderr at every tenth; a summary line at the end. Cache hits leave the total, so the ETA is
    the engines' own pace."""

    def __init__(self, total: int, description: str = "eval-annotator", to_progress: bool = False):
        from rich.console import Console

        self.total, self.done, self.hits, self.t0 = total, 0, 0, time.perf_counter()
        self.description, self._tenth, self.to_progress = description, 0, to_progress
        self.console = Console(stderr=True)
        self.bar = None
        if to_progress:  # inside a build: the build's progress bars, no lines of its own
            progress.expect(description, total)
        elif self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("requests"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(description, total=total)

    def skip(self, n: int) -> None:
        """`n` requests answered from the cache."""
        self.hits += n
        self.total = max(self.total - n, self.done)
        self._update()

    def advance(self, n: int) -> None:
        """`n` requests run by an engine (a retry may take the count past the planned total)."""
        self.done += n
        if self.to_progress:
            progress.report(self.description, n)
        self.total = max(self.total, self.done)
        self._update()

    def _update(self) -> None:
        if self.to_progress:
            progress.expect(self.description, self.total)
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, total=self.total)
            return
        tenth = 10 * self.done // self.total if self.total else 10
        if self._tenth < tenth < 10:
            self._tenth = tenth
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            print(f"{self.description}: {self.done}/{self.total} requests ({self.hits} cached), "
                  f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.to_progress:
            progress.finish(self.description, self.done)
            return
        if self.bar is not None:
            self.bar.stop()
        print(f"{self.description}: {self.done} requests run, {self.hits} cached, "
              f"{time.perf_counter() - self.t0:.0f} s", file=sys.stderr, flush=True)


def expected_requests(config: AnnotateConfig, pairs: int) -> int:
    """Engine requests `run_annotator` makes for `pairs` gold pairs, retries not counted."""
    if config.method == "judge_pairwise":
        return pairs * (2 if config.both_orders else 1)
    per_response = {"judge": max(len(config.aspects), 1)}  # the pointwise judge: a question per aspect
    return 2 * pairs * sum(per_response.get(role, 1) for role in config.roles())


class CachedEngine:
    """`engine` with its generate / score / reward results looked up by content first and stored as
    computed (`cache` None: nothing stored). `calls` counts the requests sent to the engine."""

    def __init__(self, engine: Engine, options: dict, cache: RequestCache | None, meter: RequestMeter):
        from pipeline.generate import engine_kind

        self.engine, self.cache, self.meter = engine, cache, meter
        self.model_id, self.capabilities = engine.model_id, engine.capabilities
        self.identity = (engine_kind(engine), engine.model_id, options)
        self.calls = 0

    def _run(self, call: str, requests: list, compute: Callable[[list], list], encode: Callable,
             decode: Callable) -> list:
        keys = [content_id("e", *self.identity, call, dataclasses.asdict(r)) for r in requests]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        hits = sum(k in found for k in keys)
        self.meter.skip(hits)
        todo = {k: r for k, r in zip(keys, requests) if k not in found}
        if todo:
            results = [encode(x) for x in compute(list(todo.values()))]
            self.calls += len(todo)
            found.update(zip(todo, results))
            if self.cache is not None:
                self.cache.put_many(zip(todo, results))
        self.meter.advance(len(keys) - hits)
        return [decode(found[k]) for k in keys]

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        return self._run("generate", requests, self.engine.generate,
                         lambda out: [dataclasses.asdict(c) for c in out], lambda v: [Completion(**c) for c in v])

    def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        return self._run("score", requests, self.engine.score, lambda s: s.token_logprobs, TokenScores)

    def reward(self, requests: list[ScoreRequest]) -> list[float]:
        return self._run("reward", requests, self.engine.reward, float, float)

    def close(self) -> None:
        self.engine.close()


@contextmanager
def cached_engines(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: int, cache_dir: Path | None,
                   progress_label: str | None = None) -> Iterator[tuple[dict[str, CachedEngine], dict]]:
    """The method's engines, each behind the score cache in `cache_dir` (None: no cache), counted by one
    `RequestMeter` for `pairs` gold pairs (reported to `pipeline.progress` under `progress_label`, if
    given). Yields (role -> CachedEngine, requests); on exit `requests` holds the requests run, the
    cache hits and the cache's path, and the meter and cache are closed."""
    cache = RequestCache(Path(cache_dir) / SCORE_CACHE) if cache_dir is not None else None
    total = expected_requests(config, pairs)
    meter = RequestMeter(total, progress_label, to_progress=True) if progress_label else RequestMeter(total)
    wrapped: dict[int, CachedEngine] = {}
    for role in config.roles():
        if id(engines[role]) not in wrapped:
            wrapped[id(engines[role])] = CachedEngine(engines[role], getattr(config.models, role).options, cache, meter)
    requests: dict = {}
    try:
        yield {role: wrapped[id(engines[role])] for role in config.roles()}, requests
    finally:
        meter.close()
        if cache is not None:
            cache.close()
        requests.update({"engine": sum(e.calls for e in wrapped.values()), "cached": meter.hits,
                         "cache": None if cache is None else str(cache.path)})


# --- running the annotator on gold pairs -----------------------------------------------------------

def _score_verdicts(a: list[float | None], b: list[float | None], margin: float) -> list[str]:
    out = []
    for x, y in zip(a, b):
        if x is None or y is None:
            out.append("failed")
        else:
            out.append("tie" if abs(x - y) <= margin else ("a" if x > y else "b"))
    return out


def pair_routes(config: AnnotateConfig, pairs: list[GoldPair]) -> safety_head.Routes:
    """`safety_head.route` of every gold response, A and B of each pair in turn (one embedding pass
    for both the request count and the run)."""
    return safety_head.route(config, [p.prompt for p in pairs for _ in (0, 1)],
                             [r for p in pairs for r in (p.response_a, p.response_b)])


def run_annotator(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair],
                  weights: dict | None = None, every_route: bool = True,
                  routes: safety_head.Routes | None = None) -> dict[str, dict]:
    """{variant: {"verdicts": [a|b|tie|failed], "seconds": s, ...}} for the gold pairs; `weights`:
    the ensemble's (`ensemble_fit.scoring_weights`), for method ensemble. With a safety head and
    not `every_route`, the pairs it scores skip the density ratio (only the configured variant).
    `routes`: `pair_routes(config, pairs)`, when the caller has it already."""
    variants: dict[str, dict] = {}
    if config.method == "judge_pairwise":
        judge = PairwiseJudge(engines["judge"], config)
        items = [PairItem(p.prompt, p.response_a, p.response_b,
                          criteria=route_criteria(config.criteria, p.prompt)[1]) for p in pairs]
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
        prompts = [p.prompt for p in pairs for _ in (0, 1)]
        responses = [r for p in pairs for r in (p.response_a, p.response_b)]
        routes = routes or pair_routes(config, pairs)
        judged = [i for i in range(len(responses)) if every_route or not routes.to_head[i]]
        judge = PointwiseJudge(engines["judge"], config)
        t0 = time.perf_counter()
        rated = dict(zip(judged, judge.rate([RateItem(prompts[i], responses[i],
                                                      criteria=route_criteria(config.criteria, prompts[i])[1])
                                             for i in judged])))
        seconds = time.perf_counter() - t0
        for name, attr in (("pointwise_argmax", "score_argmax"), ("pointwise_expectation", "score_expectation")):
            judge_scores = [getattr(rated[i], attr) if i in rated else None for i in range(len(responses))]
            if name == "pointwise_expectation" and judged and all(rated[i].score_expectation is None
                                                                 for i in judged):
                continue  # the engine gave no log-probs: argmax only (all routed to the head: both)
            scores = [h if to else j for h, to, j in zip(routes.heads, routes.to_head, judge_scores)]
            variants[name] = {"verdicts": _score_verdicts(scores[0::2], scores[1::2], config.tie_margin),
                              "seconds": seconds, "scores": scores}
            if config.safety_head is not None:
                variants[name]["safety_head_pairs"] = sum(routes.to_head[0::2])
                if every_route:  # each routed scorer alone, on every pair
                    variants[f"{name}[no safety head]"] = {"verdicts": _score_verdicts(
                        judge_scores[0::2], judge_scores[1::2], config.tie_margin), "seconds": seconds}
        if config.safety_head is not None and every_route:
            variants["safety head alone"] = {"verdicts": _score_verdicts(
                routes.heads[0::2], routes.heads[1::2], config.tie_margin), "seconds": 0.0}
    else:
        t0 = time.perf_counter()
        prompts = [p.prompt for p in pairs for _ in (0, 1)]
        responses = [r for p in pairs for r in (p.response_a, p.response_b)]
        by_variant: dict[str, list[float | None]] = {}
        routes = routes or pair_routes(config, pairs)  # once: the run and the head's pair count share it
        if config.method == "ensemble":
            by_variant = _ensemble_scores(config, engines, prompts, responses, routes, weights, every_route)
        elif config.method == "density_ratio":
            results = DensityRatio(engines["strong"], engines["weak"], config).score(
                prompts, responses, every_route=every_route, routes=routes)
            by_variant[config.method] = [s.reward for s in results]
            if config.safety_head is not None and every_route:  # each routed scorer alone, on every pair
                by_variant["density_ratio[no safety head]"] = [s.cdr for s in results]
                by_variant["safety head alone"] = [s.head for s in results]
            # the other length normalisations come from the same log-probs, at no extra cost
            for norm in ("none", "tokens", "chars"):
                if norm != config.length_norm and all(s.strong_logprob is not None for s in results):
                    by_variant[f"density_ratio[length_norm={norm}]"] = [
                        density_ratio(s.strong_logprob, s.strong_tokens, s.weak_logprob, s.weak_tokens,
                                      r, norm) for s, r in zip(results, responses)]
        else:
            by_variant[config.method] = RewardModel(engines["reward"], config.batch_size).score(
                prompts, responses)
        seconds = time.perf_counter() - t0
        for name, scores in by_variant.items():
            scores = [s if s is not None and np.isfinite(s) else None for s in scores]
            variants[name] = {"verdicts": _score_verdicts(scores[0::2], scores[1::2], config.tie_margin),
                              "seconds": seconds, "scores": scores}
        if config.safety_head is not None:  # a pair's prompt routes both its responses
            variants[config.method]["safety_head_pairs"] = sum(routes.to_head[0::2])
    return variants


def _ensemble_scores(config: AnnotateConfig, engines: Mapping[str, Engine], prompts: list, responses: list[str],
                     routes: safety_head.Routes, weights: dict, every_route: bool) -> dict[str, list]:
    """{variant: score of every response} of method ensemble: the ensemble with `weights` (the head's
    reward on its routes) and, from the same passes, each model's own score routed the same way;
    with `every_route`, also the ensemble without the head and the head alone."""
    scored = ensemble.score_responses(config, engines, prompts, responses, routes, every_route=every_route)

    def routed(values: list) -> list:
        return [h if to else v for h, to, v in zip(routes.heads, routes.to_head, values)]

    fitted = [None if s.features is None else ensemble.score(weights, s.features) for s in scored]
    out = {"ensemble": routed(fitted)}
    if "strong" in config.roles():
        out["density_ratio"] = routed([None if s.ratio is None else s.ratio.cdr for s in scored])
    if "judge" in config.roles():
        out["pointwise judge"] = routed([None if s.rating is None else s.rating.score for s in scored])
    if config.safety_head is not None and every_route:
        out.update({"ensemble[no safety head]": fitted, "safety head alone": routes.heads})
    return out


# --- statistics -----------------------------------------------------------------------------------

def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray | None:
    """(resamples, n) pair indices drawn with replacement, seeded: one draw serves every statistic
    of a report, so intervals of differences are paired. None when n < 2 or no resamples."""
    if n < 2 or resamples < 1:
        return None
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(stat: Callable[[np.ndarray], np.ndarray], idx: np.ndarray | None) -> list[float | None]:
    """95% percentile interval of the vectorised `stat(idx)` (one value per resample), over the
    resamples where it is defined."""
    if idx is None:
        return [None, None]
    samples = stat(idx)
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return [None, None]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def _rate(values: np.ndarray, keep: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row of `idx`: sum of `values` over sum of `keep` (nan when nothing is kept)."""
    den = keep[idx].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, values[idx].sum(1) / np.maximum(den, 1), np.nan)


def _correct(gold: np.ndarray, pred: np.ndarray, exclude_ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """(right, counted) per pair: gold ties are not counted when `exclude_ties`; a predicted tie
    or a failure counts as wrong."""
    keep = gold != "tie" if exclude_ties else np.ones(len(gold), bool)
    return (pred == gold) & keep, keep


def accuracy_resampled(gold: np.ndarray, pred: np.ndarray, idx: np.ndarray, exclude_ties: bool = True
                       ) -> np.ndarray:
    """Accuracy on each resample (row) of `idx`."""
    return _rate(*_correct(gold, pred, exclude_ties), idx)


def difference_resampled(gold: np.ndarray, pred: np.ndarray, base: np.ndarray, idx: np.ndarray
                         ) -> np.ndarray:
    """Accuracy (gold ties excluded) of `pred` minus that of `base` on each resample of `idx`: the
    same pairs for both, so shared errors cancel."""
    right, keep = _correct(gold, pred, True)
    return _rate(right.astype(int) - _correct(gold, base, True)[0], keep, idx)


def kappa_resampled(gold: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Cohen's kappa over LABELS on each resample of `idx` (nan where chance agreement is 1)."""
    index = {label: i for i, label in enumerate(LABELS)}
    k = len(LABELS)
    cell = (np.fromiter((index[x] for x in gold), int, len(gold)) * k
            + np.fromiter((index[x] for x in pred), int, len(pred)))
    rows = idx.shape[0]
    counts = np.bincount((cell[idx] + k * k * np.arange(rows)[:, None]).ravel(), minlength=rows * k * k)
    confusion = counts.reshape(rows, k, k) / idx.shape[1]
    observed = np.trace(confusion, axis1=1, axis2=2)
    expected = np.einsum("ri,ri->r", confusion.sum(2), confusion.sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected == 1.0, np.nan, (observed - expected) / (1.0 - expected))


def full_sample(n: int) -> np.ndarray:
    """The indices of the sample itself, as one "resample" (point estimates)."""
    return np.arange(n)[None, :]


def cohen_kappa(gold: np.ndarray, pred: np.ndarray) -> float:
    """Cohen's kappa over LABELS (sklearn's definition, vectorised for the bootstrap); nan when
    undefined (chance agreement 1)."""
    return float("nan") if len(gold) == 0 else float(kappa_resampled(gold, pred, full_sample(len(gold)))[0])


def _accuracy(gold: np.ndarray, pred: np.ndarray, exclude_ties: bool) -> float:
    if not len(gold):
        return float("nan")
    return float(accuracy_resampled(gold, pred, full_sample(len(gold)), exclude_ties)[0])


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
    idx = resample_indices(len(g), resamples, seed)
    out["ci95"] = {
        "accuracy_excluding_ties": bootstrap_ci(lambda i: accuracy_resampled(g, p, i, True), idx),
        "accuracy_including_ties": bootstrap_ci(lambda i: accuracy_resampled(g, p, i, False), idx),
        "cohen_kappa": bootstrap_ci(lambda i: kappa_resampled(g, p, i), idx),
    }
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}


def configured_variant(config: AnnotateConfig, variants: Mapping) -> str:
    """The variant whose verdicts the annotate stage would use with this configuration."""
    if config.method == "judge_pairwise":
        if config.expectation and "expectation" in variants:
            return "expectation"
        return "both_orders" if config.both_orders else "single_order"
    if config.method == "judge_pointwise":
        return "pointwise_expectation" if config.expectation and "pointwise_expectation" in variants \
            else "pointwise_argmax"
    return config.method


def evaluate_annotator(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair],
                       resamples: int = 1000, cache_dir: Path | None = None,
                       length_guard: LengthConfig | None = None, progress_label: str | None = None,
                       weights: dict | None = None, every_route: bool = True) -> dict:
    """The eval-annotator report (a JSON-able dict) for `pairs`, with the trivial baselines and the
    verdict against them (`baselines`). With `cache_dir`, engine results are cached there by
    content (SCORE_CACHE); `length_guard` is the recipe's `filters.length` (recipe_length_guard).
    `progress_label`: report the requests to `pipeline.progress` under it (inside a build).
    `weights`: the ensemble's fitted weights, for method ensemble. `every_route=False`: the safety
    head's pairs skip the density ratio (the gate: only the configured variant counts)."""
    if config.method == "ensemble" and weights is None:
        raise ValueError("eval-annotator: method ensemble needs its fitted weights (ensemble_fit.measure)")
    from pipeline.annotate.baselines import compare_with_baselines
    from pipeline.annotate.stage import annotator_name

    routes = pair_routes(config, pairs) if config.safety_head is not None else None
    planned = len(pairs)
    if routes is not None and not every_route:  # the head's pairs make no engine request
        planned = len(pairs) - sum(routes.to_head[0::2])
    with cached_engines(config, engines, planned, cache_dir, progress_label) as (cached, requests):
        runs = run_annotator(config, cached, pairs, weights, every_route, routes)
    to_head = next((r["safety_head_pairs"] for r in runs.values() if "safety_head_pairs" in r), None)
    gold = [p.label for p in pairs]
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    variants = {}
    for name, run in runs.items():
        m = metrics(gold, run["verdicts"], la, lb, resamples, config.seed)
        m["seconds"] = round(run["seconds"], 2)
        m["seconds_per_pair"] = round(run["seconds"] / max(len(pairs), 1), 3)
        if "flip_rate" in run:
            m["flip_rate"] = run["flip_rate"]
        if "p_a_wins" in run:  # per pair, to choose expectation_tie_band
            m["p_a_wins"] = [None if x is None else round(x, 4) for x in run["p_a_wins"]]
        variants[name] = m
    name = annotator_name(config, engines)
    configured = configured_variant(config, variants)
    return {
        "annotator": name,
        "method": config.method,
        "models": {role: engines[role].model_id for role in config.roles()},
        "config": config.model_dump(mode="json"),
        "gold_labels": dict(Counter(gold)),
        "variants": variants,
        "configured_variant": configured,
        "requests": requests,
        **({} if to_head is None else {"safety_head_pairs": to_head}),
        **compare_with_baselines(name, pairs, {k: r["verdicts"] for k, r in runs.items()}, configured,
                                 length_guard, resamples, config.seed),
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
    if report.get("requests", {}).get("cached"):
        r = report["requests"]
        lines += ["", f"{r['cached']} engine requests came from the cache (`{r['cache']}`), {r['engine']} ran: "
                  "seconds cover only those that ran."]
    if "baselines" in report:
        from pipeline.annotate.baselines import to_markdown as baselines_markdown

        lines += baselines_markdown(report)
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "eval-annotator.json", out_dir / "eval-annotator.md"
    js.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    md.write_text(to_markdown(report))
    return js, md
