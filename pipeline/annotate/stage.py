"""The annotate stage: one candidate shard -> one ANNOTATION part (+ a COMPARISON part for the
pairwise judge) + the dropped rows + `annotate_stats.json` (reliability, self-preference, seed).

Every candidate gets an annotation row: `ok` with a score, or `failed` with a null score, the
reason and the raw judge text; failed ones are also written to the dropped table, so
rows_in = rows_out + rows_dropped holds and nothing disappears silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

from pipeline.annotate import ensemble, safety_head
from pipeline.annotate.config import AnnotateConfig, route_criteria
from pipeline.annotate.density_ratio import DensityRatio
from pipeline.annotate.judge import PairItem, PairwiseJudge, PointwiseJudge, RateItem
from pipeline.annotate.reliability import Reliability, self_preference
from pipeline.annotate.reward_model import RewardModel
from pipeline.engines.base import Engine
from pipeline.progress import report
from pipeline.shards import DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import ANNOTATION, COMPARISON

STATS_JSON = "annotate_stats.json"


def annotator_name(config: AnnotateConfig, engines: Mapping[str, Engine]) -> str:
    head = "+safety_head" if config.safety_head is not None else ""
    ratio = f"{engines['strong'].model_id}/{engines['weak'].model_id}" if "strong" in config.roles() else None
    if config.method == "density_ratio":
        return f"cdr:{ratio}{head}"
    if config.method == "ensemble":  # its models: strong/weak, the judge, or both (strong/weak+judge)
        judge = engines["judge"].model_id if "judge" in config.roles() else None
        return "ensemble:" + "+".join(m for m in (ratio, judge) if m) + head
    if config.method == "reward_model":
        return f"rm:{engines['reward'].model_id}"
    return f"{config.method}:{engines['judge'].model_id}{head}"


def _discrete(comp) -> str:
    """The verdict without log-probs: the single order's, or both orders' when they agree, else tie."""
    if comp.verdict_ba is None or comp.verdict_ab == comp.verdict_ba:
        return comp.verdict_ab
    return "tie"


def _outcome(verdict: str, me: str) -> float:
    return 0.5 if verdict == "tie" else float(verdict == me)


class _Result:
    """What one candidate's annotation becomes (an ANNOTATION row)."""

    def __init__(self, status: str, score=None, argmax=None, expectation=None, aspects=None,
                 rationale=None, raw=None, error=None, details=None):
        self.status, self.score, self.argmax, self.expectation = status, score, argmax, expectation
        self.aspects, self.rationale, self.raw, self.error = aspects, rationale, raw, error
        self.details = details or {}


def _judge_pointwise(config, engines, convs, refs, on_batch) -> list[tuple[dict, _Result]]:
    judge = PointwiseJudge(engines["judge"], config)
    cands = [c for group in convs.values() for c in group]
    routes = safety_head.route(config, [c["prompt"] for c in cands], [c["response"] for c in cands])
    judged = [c for c, to_head in zip(cands, routes.to_head) if not to_head]
    if len(judged) < len(cands):
        on_batch(len(cands) - len(judged))  # the head's candidates are scored already
    items = [RateItem(c["prompt"], c["response"], refs.get((c["conversation_id"], c["candidate_id"])),
                      route_criteria(config.criteria, c["prompt"])[1]) for c in judged]
    rated = {id(c): r for c, r in zip(judged, judge.rate(items, on_batch))}
    out = []
    for cand, head, p_safety, to_head in zip(cands, routes.heads, routes.p_safety, routes.to_head):
        routing = ({"route": "safety_head" if to_head else "judge", "safety_head": head, "p_safety": p_safety}
                   if config.safety_head is not None else {})
        if to_head:
            out.append((cand, _Result("ok", head, details=routing)))
            continue
        r = rated[id(cand)]
        out.append((cand, _Result(r.status, r.score, r.score_argmax, r.score_expectation,
                                  json.dumps(r.aspects) if r.aspects else None, r.rationale, r.raw,
                                  r.error, {"seeds": r.seeds, **routing})))
    return out


def _judge_pairwise(config, engines, convs, refs, comparisons: ShardWriter, annotator: str,
                    reliability: Reliability, on_batch) -> list[tuple[dict, _Result]]:
    judge = PairwiseJudge(engines["judge"], config)
    pairs = [(a, b) for group in convs.values() for a, b in combinations(group, 2)]
    items = [PairItem(a["prompt"], a["response"], b["response"],
                      refs.get((a["conversation_id"], a["candidate_id"]))
                      if refs.get((a["conversation_id"], a["candidate_id"])) ==
                      refs.get((b["conversation_id"], b["candidate_id"])) else None,
                      route_criteria(config.criteria, a["prompt"])[1]) for a, b in pairs]
    per_pair = sum(len(g) for g in convs.values()) / max(len(pairs), 1)  # candidates a pair stands for
    results = judge.compare(items, on_batch=lambda done: on_batch(done * per_pair))
    record: dict[str, list] = {}
    for (a, b), comp in zip(pairs, results):
        reliability.add_comparison(comp, len(a["response"]), len(b["response"]))
        comparisons.write({
            "conversation_id": a["conversation_id"], "candidate_a": a["candidate_id"],
            "candidate_b": b["candidate_id"], "annotator": annotator, "status": comp.status,
            "verdict_ab": comp.verdict_ab, "verdict_ba": comp.verdict_ba, "verdict": comp.verdict,
            "p_a_wins": comp.p_a_wins, "p_a_ab": comp.p_a_ab, "p_a_ba": comp.p_a_ba,
            "raw_ab": comp.raw_ab, "raw_ba": comp.raw_ba, "error": comp.error, "seeds": comp.seeds})
        for cand, me, other in ((a, "a", b), (b, "b", a)):
            record.setdefault(cand["candidate_id"], []).append((comp, me, other["candidate_id"]))
    out = []
    for group in convs.values():
        for cand in group:
            entries = record.get(cand["candidate_id"], [])
            if not entries:
                out.append((cand, _Result("failed", error="single_candidate: nothing to compare with")))
                continue
            ok = [(c, me) for c, me, _ in entries if c.status == "ok"]
            if not ok:
                first = entries[0][0]
                out.append((cand, _Result("failed", raw=json.dumps({"ab": first.raw_ab, "ba": first.raw_ba}),
                                          error=first.error)))
                continue
            argmax = sum(_outcome(_discrete(c), me) for c, me in ok) / len(ok)
            probs = [c.p_a_wins if me == "a" else 1.0 - c.p_a_wins for c, me in ok
                     if c.p_a_wins is not None]
            expectation = sum(probs) / len(probs) if len(probs) == len(ok) else None
            score = sum(_outcome(c.verdict, me) for c, me in ok) / len(ok)
            if config.expectation and expectation is not None:
                score = expectation
            details = {"compared": len(entries), "judged": len(ok),
                       "wins": sum(c.verdict == me for c, me in ok),
                       "ties": sum(c.verdict == "tie" for c, _ in ok),
                       "seeds": sorted({s for c, _, _ in entries for s in c.seeds})}
            out.append((cand, _Result("ok", score, argmax, expectation, details=details)))
    return out


def _density_ratio(config, engines, convs, on_batch) -> list[tuple[dict, _Result]]:
    cdr = DensityRatio(engines["strong"], engines["weak"], config)
    cands = [c for group in convs.values() for c in group]
    scores = cdr.score([c["prompt"] for c in cands], [c["response"] for c in cands], on_batch)
    return [(c, _Result("ok", s.reward, details={
        "strong_logprob": s.strong_logprob, "weak_logprob": s.weak_logprob,
        "strong_tokens": s.strong_tokens, "weak_tokens": s.weak_tokens, "domain": s.domain,
        "length_norm": config.length_norm,
        **({"route": s.route, "density_ratio": s.cdr, "safety_head": s.head, "p_safety": s.p_safety}
           if config.safety_head is not None else {})})) for c, s in zip(cands, scores)]


def _ensemble(config, engines, convs, refs, on_batch, weights: dict) -> list[tuple[dict, _Result]]:
    cands = [c for group in convs.values() for c in group]
    prompts, responses = [c["prompt"] for c in cands], [c["response"] for c in cands]
    routes = safety_head.route(config, prompts, responses)
    scored = ensemble.score_responses(config, engines, prompts, responses, routes, on_batch, references=[
        refs.get((c["conversation_id"], c["candidate_id"])) for c in cands])
    out = []
    for c, s, head, p_safety, to_head in zip(cands, scored, routes.heads, routes.p_safety, routes.to_head):
        details = ({"route": "safety_head" if to_head else "ensemble", "safety_head": head, "p_safety": p_safety}
                   if config.safety_head is not None else {})
        if to_head:
            out.append((c, _Result("ok", head, details=details)))
            continue
        if s.ratio is not None:
            details.update({"domain": s.ratio.domain, "strong_tokens": s.ratio.strong_tokens,
                            "weak_tokens": s.ratio.weak_tokens})
        r = s.rating
        judged = {} if r is None else {"argmax": r.score_argmax, "expectation": r.score_expectation,
                                       "rationale": r.rationale, "raw": r.raw}
        if s.features is None:
            out.append((c, _Result("failed", error=s.error, details=details, **judged)))
            continue
        details["features"] = s.features
        out.append((c, _Result("ok", ensemble.score(weights, s.features), details=details, **judged)))
    return out


def _reward_model(config, engines, convs) -> list[tuple[dict, _Result]]:
    rm = RewardModel(engines["reward"], config.batch_size)
    cands = [c for group in convs.values() for c in group]
    scores = rm.score([c["prompt"] for c in cands], [c["response"] for c in cands])
    return [(c, _Result("ok", s)) for c, s in zip(cands, scores)]


def annotate_shard(candidate_shard: Path, out_dir: Path, config: AnnotateConfig,
                   engines: Mapping[str, Engine], *, stage: str, weights: dict | None = None) -> StageStats:
    """Annotate every candidate of one shard with `config.method`; `engines` maps the method's
    roles (judge | strong, weak | reward) to loaded engines; `weights`: the ensemble's fitted
    weights (`ensemble_fit.scoring_weights`), for method ensemble."""
    missing = [r for r in config.roles() if r not in engines]
    if missing:
        raise ValueError(f"{stage}: method {config.method} needs engines for {', '.join(missing)}")
    if config.method == "ensemble" and weights is None:
        raise ValueError(f"{stage}: method ensemble needs its fitted weights")
    out_dir = Path(out_dir)
    stats = StageStats(stage)
    annotations = ShardWriter(out_dir, ANNOTATION, shard_rows=1 << 30)
    comparisons = ShardWriter(out_dir, COMPARISON, prefix="comparison", shard_rows=1 << 30)
    dropped = DroppedWriter(out_dir, stage)
    annotator = annotator_name(config, engines)

    convs: dict[str, list[dict]] = {}
    refs: dict[tuple[str, str], str] = {}
    generators: set[str] = set()
    empty: list[dict] = []
    for cand in iter_rows(candidate_shard):
        if not (cand.get("response") or "").strip():
            empty.append(cand)
            continue
        convs.setdefault(cand["conversation_id"], []).append(cand)
        if cand.get("origin") == "on_policy" and cand.get("model"):
            generators.add(cand["model"])
    if config.reference_label and "judge" in config.roles():
        for cid, group in convs.items():
            ref = next((c["response"] for c in group if c.get("source_label") == config.reference_label), None)
            for c in group:
                if ref is not None and c.get("source_label") != config.reference_label:
                    refs[(cid, c["candidate_id"])] = ref

    reported = 0.0

    def tick(candidates: float) -> None:
        nonlocal reported
        reported += candidates
        report(stage, candidates)

    reliability = Reliability()
    if config.method == "judge_pointwise":
        results = _judge_pointwise(config, engines, convs, refs, tick)
    elif config.method == "judge_pairwise":
        results = _judge_pairwise(config, engines, convs, refs, comparisons, annotator, reliability, tick)
    elif config.method == "density_ratio":
        results = _density_ratio(config, engines, convs, tick)
    elif config.method == "ensemble":
        results = _ensemble(config, engines, convs, refs, tick, weights)
    else:
        results = _reward_model(config, engines, convs)
    results += [(c, _Result("failed", error="empty_response: nothing to annotate")) for c in empty]

    by_id = {c["candidate_id"]: r for c, r in results}
    for cand, res in results:
        if res.status == "ok" and (res.score is None or not math.isfinite(res.score)):
            res.status, res.error, res.score = "failed", f"non_finite_score: {res.score}", None
        annotations.write({
            "candidate_id": cand["candidate_id"], "conversation_id": cand["conversation_id"],
            "annotator": annotator, "status": res.status,
            "score": res.score if res.status == "ok" else None,
            "score_argmax": res.argmax, "score_expectation": res.expectation,
            "aspects": res.aspects, "rationale": res.rationale, "raw": res.raw,
            "method": config.method, "error": res.error,
            "details": json.dumps(res.details, sort_keys=True) if res.details else None})
        if res.status == "ok":
            stats.keep()
        else:
            reason = res.error.split(":", 1)[0]
            dropped.drop(reason, row={k: v for k, v in cand.items() if k != "prompt"},
                         detail=res.error, row_id=cand["candidate_id"], source=cand.get("source"),
                         source_row=cand.get("source_row"), conversation_id=cand["conversation_id"])
            stats.drop(reason)
            stats.outputs_written += 1  # the failed annotation row is in the table too
    if config.method != "judge_pairwise":
        for group in convs.values():
            for a, b in combinations(group, 2):
                ra, rb = by_id[a["candidate_id"]], by_id[b["candidate_id"]]
                if ra.status == rb.status == "ok":
                    reliability.add_scores(ra.score, rb.score, len(a["response"]), len(b["response"]),
                                           config.tie_margin)

    models = {role: engines[role].model_id for role in config.roles()}
    summary = {
        "shard": Path(candidate_shard).name, "annotator": annotator, "method": config.method,
        "models": models, "seed": config.seed, "reliability": reliability.to_dict(),
        "self_preference": self_preference(models, generators),
        "failed": stats.rows_dropped, "annotated": stats.rows_out,
        "with_expectation": sum(1 for _, r in results if r.status == "ok" and r.expectation is not None),
    }
    if config.safety_head is not None:
        summary["safety_head_scored"] = sum(1 for _, r in results if r.details.get("route") == "safety_head")
    annotations.close()
    comparisons.close()
    dropped.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATS_JSON).write_text(json.dumps(summary, indent=2, sort_keys=True))
    report(stage, stats.rows_in - reported)
    return stats.check()


def judge_reliability(stats_files: list[Path]) -> dict:
    """The manifest's `judge_reliability` from the shards' `annotate_stats.json` files: rates over
    all shards (from summed counts), plus the distinct self-preference warnings."""
    from pipeline.annotate.reliability import merge

    summaries = [json.loads(Path(p).read_text()) for p in stats_files]
    merged = merge([s["reliability"] for s in summaries])
    merged["self_preference"] = sorted({w for s in summaries for w in s["self_preference"]})
    merged["annotators"] = sorted({s["annotator"] for s in summaries})
    return merged
