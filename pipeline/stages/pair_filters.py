"""Pair filters: the per-shard length guard, and the cuts over the whole build (margin budget,
CHES top fraction). Each only decides keep or drop-with-reason (`pipeline.filters.pair_filter`:
`RowFilter`, `BuildCut`); the base counts and routes."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.filters.ches import ches_build, open_engine
from pipeline.filters.length import LengthGuard
from pipeline.filters.margin import MarginCut
from pipeline.lineage import PAIRS
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit, lazy_engines
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
    name = "ches"
    kind = "build"
    outputs = "kept/*/part-*.parquet"
    roles = ("ches",)

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        with lazy_engines(lambda: {"ches": open_engine(self.settings)}) as engines:
            scoring, kept = ches_build([Path(s) for s in unit.inputs], out, self.settings, engines.get()["ches"],
                                       self.name, self.recipe.ingest.shard_rows)
        (out / "ches_scoring.json").write_text(json.dumps(scoring.to_dict()))
        total = StageStats.total(self.name, kept)
        # Pairs the scoring step could not score are drops of this stage too.
        total.rows_in += scoring.rows_dropped
        total.rows_dropped += scoring.rows_dropped
        total.reasons.update(scoring.reasons)
        return total

    def progress_labels(self) -> list[str]:
        return [f"{self.name} scoring", self.name]  # as ches_score_shard reports

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        ches = self.settings
        return {"models": {"ches_model": ches.model},
                "ches": {"threshold": ches.threshold, "fraction": ches.top_fraction, "score": ches.score}}, {}
