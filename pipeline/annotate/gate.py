"""The annotator gate (`annotate.gate`): before a build annotates anything, measure its annotator
on human-labelled gold pairs (as `eval-annotator` does, with the trivial baselines and a bootstrap
CI) and stop the build when the accuracy is below `min_accuracy`, unless forced. The report is
kept under the work root by content (gold bytes, annotator config, code), so an unchanged gate is
measured once, and it is published as the manifest's `annotator_eval` either way."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.annotate.config import AnnotateConfig
from pipeline.atomic import replace_file
from pipeline.filters.length import LengthConfig
from pipeline.ids import content_id, file_sha256
from pipeline.keys import code_version


class GateFailed(Exception):
    """The annotator agreed with the gold labels less than the recipe's gate requires."""


def report_path(config: AnnotateConfig, guard: LengthConfig | None, work_root: Path) -> Path:
    gate = config.gate
    key = content_id("g", file_sha256(Path(gate.gold)), config.content_key(),
                     guard.model_dump(mode="json") if guard else None, code_version())
    return Path(work_root) / "gate" / f"{key}.json"


def accuracy(report: dict) -> tuple[float | None, list]:
    """(accuracy excluding ties, its 95% CI) of the configured variant of an eval-annotator report."""
    m = report["variants"][report["configured_variant"]]
    return m["accuracy_excluding_ties"], (m.get("ci95") or {}).get("accuracy_excluding_ties") or [None, None]


def measure(config: AnnotateConfig, guard: LengthConfig | None, work_root: Path) -> dict:
    """The gate's eval-annotator report (measured now, or read back when nothing changed)."""
    from pipeline.annotate.eval import annotator_engines, build_score_cache, evaluate_annotator
    from pipeline.annotate.gold import load_gold

    path = report_path(config, guard, work_root)
    if path.is_file():
        return json.loads(path.read_text())
    gate = config.gate
    pairs, rejected = load_gold(Path(gate.gold), gate.format, gate.limit, gate.seed)
    if not pairs:
        raise GateFailed(f"annotate.gate.gold: {gate.gold}: no usable gold pairs ({len(rejected)} rows rejected)")
    engines = annotator_engines(config)
    try:
        weights = None
        if config.method == "ensemble":
            from pipeline.annotate import ensemble_fit

            weights = ensemble_fit.scoring_weights(ensemble_fit.measure(config, work_root, engines))
        report = evaluate_annotator(config, engines, pairs, gate.resamples, cache_dir=build_score_cache(work_root),
                                    length_guard=guard, progress_label="annotator gate", weights=weights,
                                    every_route=False)
    finally:
        for engine in {id(e): e for e in engines.values()}.values():
            engine.close()
    report["gold"] = {"path": gate.gold, "format": gate.format, "pairs": len(pairs), "limit": gate.limit,
                      "seed": gate.seed, "rejected": len(rejected)}
    acc, ci = accuracy(report)
    report["gate"] = {"min_accuracy": gate.min_accuracy, "accuracy": acc, "ci95": ci,
                      "passed": acc is not None and acc >= gate.min_accuracy}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(report, indent=2, sort_keys=True).encode())
    return report


def sentence(report: dict) -> str:
    """`annotator gate: ANNOTATOR agreed with 0.62 [0.51, 0.72] of 100 gold pairs of FILE (min 0.55): passed`."""
    g, gold = report["gate"], report["gold"]
    acc, (lo, hi) = g["accuracy"], g["ci95"]
    measured = "no decisive pair" if acc is None else (
        f"{acc:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""))
    return (f"annotator gate: {report['annotator']} agreed with the human labels on {measured} of "
            f"{gold['pairs']} gold pairs of {Path(gold['path']).name} (min_accuracy {g['min_accuracy']:g}): "
            + ("passed" if g["passed"] else "below the gate"))


def check(config: AnnotateConfig, guard: LengthConfig | None, work_root: Path, force: bool) -> dict:
    """Measure and decide: GateFailed (nothing annotated) below the threshold unless `force`."""
    report = measure(config, guard, work_root)
    if not report["gate"]["passed"] and not force:
        raise GateFailed(f"{sentence(report)}; nothing was annotated: choose a stronger annotator, or rerun "
                         f"with --force to build anyway (the card will say so)")
    report["gate"]["forced"] = not report["gate"]["passed"]
    return report
