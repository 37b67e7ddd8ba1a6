"""Pairs: from the source's own chosen/rejected responses, or from scored candidates (one unit per
generate shard with its annotations)."""

from __future__ import annotations

from pathlib import Path

from pipeline.lineage import CONVERSATIONS, PAIRS
from pipeline.pairs import build_pairs, source_pairs
from pipeline.stages.base import Stage, StageResult, Unit
from pipeline.stages.models import AnnotateStage, GenerateStage
from pipeline.stats import StageStats


class PairsStage(Stage):
    name = "pairs"
    sections = ("pairs",)
    unit_in, unit_out = CONVERSATIONS, PAIRS

    def units(self, upstream: list[StageResult], earlier: dict[str, list[StageResult]]) -> list[Unit]:
        """Scored pairs read each generate shard's candidates with their annotations (the annotate
        directory of that shard)."""
        if self.recipe.generate is None:
            return super().units(upstream, earlier)
        return [Unit(inputs=[c.outputs[0], a.dir], identities=[c.key, a.key])
                for c, a in zip(earlier[GenerateStage.name], earlier[AnnotateStage.name])]

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        rows = self.recipe.ingest.shard_rows
        if self.recipe.generate is None:
            return source_pairs(Path(unit.inputs[0]), out, rows, stage=self.name)
        candidates, annotations = Path(unit.inputs[0]), Path(unit.inputs[1])
        scores = sorted(annotations.glob("part-*.parquet"))
        comparison = sorted(annotations.glob("comparison-*.parquet"))
        return build_pairs(candidates, scores[0] if scores else None, out, self.recipe.pairs,
                           comparison[0] if comparison else None, rows, stage=self.name)

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        candidates = [p for r in results for p in sorted(Path(r.dir).glob("candidates-*.parquet"))]
        return {}, {f"candidates/candidates-{i:05d}.parquet": p for i, p in enumerate(candidates)}
