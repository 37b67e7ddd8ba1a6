"""Ingest: each recipe input -> conversation shards + a quarantine; incremental: drop what earlier
versions already hold."""

from __future__ import annotations

from pathlib import Path

from pipeline import incremental
from pipeline.ingest import ingest_input
from pipeline.lineage import CONVERSATIONS
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit
from pipeline.stats import StageStats


class IngestStage(Stage):
    name = "ingest"
    sections = ("ingest",)
    unit_in, unit_out = "input rows", CONVERSATIONS

    def units(self, upstream: list[StageResult], earlier: dict[str, list[StageResult]]) -> list[Unit]:
        """One unit per input still to read (its bytes' sha256, start offset and format options)."""
        return [Unit(inputs=[], identities=[plan["sha256"], str(plan["start_offset"]),
                                            self.recipe.inputs[i].model_dump_json(exclude={"path", "license"})],
                     params={"index": i, "start_offset": plan["start_offset"], "start_row": plan["start_row"]})
                for i, plan in enumerate(self.context.plans) if not plan["skip"]]

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        p = unit.params
        return ingest_input(self.recipe.inputs[p["index"]], self.recipe.ingest, out, p["start_offset"],
                            p["start_row"], stage=self.name)


class IncrementalStage(Stage):
    name = "incremental"
    sections = ()
    unit_in, unit_out = CONVERSATIONS, CONVERSATIONS
    ends_build_when_empty = True

    @classmethod
    def enabled(cls, recipe, context: BuildContext) -> bool:
        return context.incremental and bool(context.versions)

    def config(self) -> str:
        return ",".join(str(v) for v in self.context.versions)

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        seen = incremental.seen_ids(self.context.versions)
        return incremental.drop_seen(Path(unit.inputs[0]), out, seen, self.recipe.ingest.shard_rows, stage=self.name)
