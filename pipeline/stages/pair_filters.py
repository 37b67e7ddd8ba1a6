"""Pair filters: the per-shard length guard, and the cuts over the whole build (margin budget,
CHES top fraction after CHES scoring per shard). Each only decides keep or drop-with-reason
(`pipeline.filters.pair_filter`: `RowFilter`, `BuildCut`); the base counts and routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.filters.ches import ChesCut, ches_score_shard, engine_spec
from pipeline.filters.length import LengthGuard
from pipeline.filters.margin import MarginCut
from pipeline.lineage import PAIRS
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit, json_config, lazy_engines
from pipeline.stats import StageStats


class PairFilter(Stage):
    sections = ("filters",)
    unit_in, unit_out = PAIRS, PAIRS

    @classmethod
    def enabled(cls, recipe, context: BuildContext) -> bool:
        return getattr(recipe.filters, cls.name) is not None

    @property
    def settings(self):
        return getattr(self.recipe.filters, self.name)


class LengthStage(PairFilter):
    name = "length"

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        return LengthGuard(self.settings, self.name).filter_shard(Path(unit.inputs[0]), out,
                                                                 self.recipe.ingest.shard_rows)


class MarginStage(PairFilter):
    name = "margin"
    kind = "build"
    outputs = "*/part-*.parquet"

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        cut = MarginCut(self.settings, self.name)
        return StageStats.total(self.name, cut.filter_build([Path(s) for s in unit.inputs], out,
                                                            self.recipe.ingest.shard_rows))


class ChesStage(PairFilter):
    """The CHES cut (top fraction, threshold) over the whole build: one task, no model. Its
    prelude `ChesScoring` first scores every shard, one task per shard, so the model work spreads
    over workers like any shard task; the cut then ranks all the scores. Two steps but one stage
    (one funnel row, one name on drops and in the manifest), not two registry stages: scoring
    keeps every pair, so a row of its own would only repeat the row count. The cut's counts are
    the stage's."""

    name = "ches"
    kind = "build"
    outputs = "*/part-*.parquet"

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        cut = ChesCut(self.settings, self.name)
        return StageStats.total(self.name, cut.filter_build([Path(s) for s in unit.inputs], out,
                                                            self.recipe.ingest.shard_rows))

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        ches = self.settings
        return {"models": {"ches_model": ches.model},
                "ches": {"threshold": ches.threshold, "fraction": ches.top_fraction, "score": ches.score}}, {}


class ChesScoring(Stage):
    """CHES scores of one shard's pairs into their metadata (never drops): `ChesStage`'s prelude.
    Keyed by what the scores depend on (model, dtype, batch sizes), not by the cut, so changing
    `top_fraction` or `threshold` reuses every score."""

    name = f"{ChesStage.name}_scoring"
    sections = ("filters",)
    unit_in, unit_out = PAIRS, PAIRS
    roles = ("ches",)

    @property
    def settings(self):
        return getattr(self.recipe.filters, ChesStage.name)

    def config(self) -> str:
        ches = json.loads(self.recipe.stage_config(*self.sections))["filters"][ChesStage.name]
        return json_config({k: v for k, v in ches.items() if k not in ("score", "top_fraction", "threshold")})

    @contextmanager
    def resources(self) -> Iterator[dict]:
        with lazy_engines({"ches": engine_spec(self.settings)}) as engines:
            yield {"engines": engines}

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        return ches_score_shard(Path(unit.inputs[0]), out, self.settings, resources["engines"].get()["ches"],
                                ChesStage.name, self.recipe.ingest.shard_rows)

    def progress_labels(self) -> list[str]:
        return [f"{ChesStage.name} scoring"]  # as ches_score_shard reports


ChesStage.prelude = ChesScoring
