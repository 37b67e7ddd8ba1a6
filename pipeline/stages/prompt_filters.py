"""Prompt filters over the whole build: exact/near/semantic dedup and benchmark decontamination."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.lineage import CONVERSATIONS
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit, json_config
from pipeline.stats import StageStats


class PromptFilter(Stage):
    """A whole-build filter of conversations, configured by the recipe section of its name."""

    kind = "build"
    unit_in, unit_out = CONVERSATIONS, CONVERSATIONS

    @classmethod
    def enabled(cls, recipe, context: BuildContext) -> bool:
        return getattr(recipe, cls.name) is not None


class DedupStage(PromptFilter):
    name = "dedup"
    sections = ("dedup",)

    def previous(self) -> list[str]:
        """Earlier versions' dedup indexes a build matches against (incremental builds)."""
        if not self.context.incremental:
            return []
        return [str(v / "index" / "dedup") for v in self.context.versions if (v / "index" / "dedup").is_dir()]

    def config(self) -> str:
        return super().config() + json_config(self.previous())

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        from pipeline.filters.dedup import dedup_shards

        return dedup_shards([Path(s) for s in unit.inputs], out, self.recipe.dedup,
                            [Path(p) for p in self.previous()], stage=self.name)

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        reasons = results[0].stats["reasons"]
        index = Path(results[0].dir) / "index"
        return ({"dedup": {k: reasons.get(f"{k}_duplicate", 0) for k in ("exact", "near", "semantic")}},
                {f"index/dedup/{p.relative_to(index)}": p for p in index.rglob("*") if p.is_file()})


class DecontamStage(PromptFilter):
    name = "decontam"
    sections = ("decontam",)

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        from pipeline.filters.decontam import decontaminate_shards

        return decontaminate_shards([Path(s) for s in unit.inputs], out, self.recipe.decontam,
                                    stage=self.name)

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        from pipeline.filters.decontam import REPORT_FILE

        report = Path(results[0].dir) / REPORT_FILE
        if not report.exists():
            return {}, {}
        return {"decontamination": json.loads(report.read_text())}, {f"reports/{REPORT_FILE}": report}
