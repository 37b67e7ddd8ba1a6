"""Model stages: generate candidates, annotate them. One task per shard, so shards spread over Dask
workers; each task takes its engines from its process's resident pool (`pipeline.engines.pool`), so
an engine loads once per worker process (and not at all where every shard is cached)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from pipeline.annotate import ensemble_fit, gate
from pipeline.annotate.reliability import self_preference
from pipeline.annotate.stage import annotate_shard, judge_reliability
from pipeline.cache import RequestCache
from pipeline.engines.identity import model_identity
from pipeline.filters.length import LengthConfig
from pipeline.generate import generate_shard
from pipeline.ids import canonical_json
from pipeline.lineage import CANDIDATES, CONVERSATIONS
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit, lazy_engines
from pipeline.stats import StageStats


def safety_head_record(config, stats_files: list[Path]) -> dict:
    """The manifest's account of the safety head: its file, what it was fitted on, and how many
    candidates it scored."""
    from pipeline.annotate import safety_head
    from pipeline.ids import file_sha256

    head = safety_head.load(config.path, config.threshold)
    scored = sum(json.loads(Path(p).read_text()).get("safety_head_scored", 0) for p in stats_files)
    return {"file": Path(config.path).name, "sha256": file_sha256(Path(config.path)), "embedder": head.embedder,
            "threshold": head.threshold, "fitted_on": head.meta.get("fitted_on"), "candidates_scored": scored}


class GenerateStage(Stage):
    name = "generate"
    sections = ("generate",)
    unit_in, unit_out = CONVERSATIONS, CANDIDATES
    roles = ("generator",)

    @classmethod
    def enabled(cls, recipe, context: BuildContext) -> bool:
        return recipe.generate is not None

    @contextmanager
    def resources(self) -> Iterator[dict]:
        specs = {s.name: s.engine_spec() for s in self.recipe.generate.models}
        with lazy_engines(specs) as engines, \
                RequestCache.in_work_dir(self.context.work_root) as cache:
            yield {"engines": engines, "cache": cache}

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        return generate_shard(Path(unit.inputs[0]), out, self.recipe.generate, resources["engines"].get(),
                              resources["cache"], stage=self.name)

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        return {"models": {"generators": [
            {"name": m.name, "model": model_identity(m.model or m.name, m.engine), "engine": m.engine, "k": m.k}
            for m in self.recipe.generate.models]}}, {}


class AnnotateStage(Stage):
    name = "annotate"
    sections = ("annotate", "generate")
    unit_in, unit_out = CANDIDATES, "annotations"
    roles = ("judge", "strong", "weak", "reward")

    @classmethod
    def enabled(cls, recipe, context: BuildContext) -> bool:
        return recipe.generate is not None

    @contextmanager
    def resources(self) -> Iterator[dict]:
        config = self.recipe.annotate  # the specs `annotate.eval.annotator_engines` opens
        specs = {role: (m.model, m.engine, m.options) for role in config.roles()
                 for m in [getattr(config.models, role)]}
        with lazy_engines(specs) as engines:
            yield {"engines": engines}

    def _guard(self) -> LengthConfig | None:
        length = self.recipe.filters.length
        return length if length is not None and length.max_ratio is not None else None

    @cached_property
    def _fit(self) -> dict | None:
        """The ensemble's fit report (fitted on first use, then read back; once per stage object, not
        per shard key or task), else None."""
        if self.recipe.annotate.method != "ensemble":
            return None
        return ensemble_fit.measure(self.recipe.annotate, self.context.work_root)

    def _weights(self) -> dict | None:
        return None if self._fit is None else ensemble_fit.scoring_weights(self._fit)

    def config(self) -> str:
        weights = self._weights()
        return super().config() if weights is None else super().config() + canonical_json(weights)

    def preflight(self) -> str | None:
        lines = []
        if self._fit is not None:
            lines.append(ensemble_fit.sentence(self._fit))
        if self.recipe.annotate.gate is not None:
            lines.append(gate.sentence(gate.check(self.recipe.annotate, self._guard(), self.context.work_root,
                                                  self.context.force)))
        return "\n".join(lines) or None

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        return annotate_shard(Path(unit.inputs[0]), out, self.recipe.annotate, resources["engines"].get(),
                              stage=self.name, weights=self._weights())

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        config = self.recipe.annotate
        refs = {role: getattr(config.models, role).model for role in config.roles()}
        ids = {role: model_identity(ref, getattr(config.models, role).engine) for role, ref in refs.items()}
        models: dict = {"annotator": {"method": config.method, **ids}}
        if "judge" in ids:
            models["judge"] = ids["judge"]
        if "strong" in ids:
            models["density_ratio"] = {"strong": ids["strong"], "weak": ids["weak"]}
        extra: dict = {"models": models}
        stats_files = [p for r in results for p in Path(r.dir).glob("annotate_stats.json")]
        if stats_files:
            extra["judge_reliability"] = judge_reliability(stats_files)
        if config.safety_head is not None:
            models["safety_head"] = safety_head_record(config.safety_head, stats_files)
        extra["warnings"] = self_preference(refs, {m.model or m.name for m in self.recipe.generate.models})
        if config.gate is not None and (path := gate.report_path(config, self._guard(), self.context.work_root)
                                        ).is_file():
            report = json.loads(path.read_text())
            report["gate"]["forced"] = not report["gate"]["passed"]  # published below the gate: forced
            extra["annotator_eval"] = report
        if (fit := self._fit) is not None:
            extra["annotator_fit"] = fit
            extra.setdefault("annotator_eval", fit)  # the cross-validated numbers, unless a gate measured
        return extra, {}
