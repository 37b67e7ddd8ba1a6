"""The stage registry: every stage in build order. Adding a stage is one module and one line here."""

from __future__ import annotations

from pipeline.recipe import Recipe
from pipeline.stages.base import BuildContext, Stage, StageResult, Unit
from pipeline.stages.ingest import IncrementalStage, IngestStage
from pipeline.stages.models import AnnotateStage, GenerateStage
from pipeline.stages.pair_filters import ChesStage, LengthStage, MarginStage
from pipeline.stages.pairs import PairsStage
from pipeline.stages.prompt_filters import DecontamStage, DedupStage

REGISTRY: list[type[Stage]] = [
    IngestStage,
    IncrementalStage,
    DedupStage,
    DecontamStage,
    GenerateStage,
    AnnotateStage,
    PairsStage,
    LengthStage,
    MarginStage,
    ChesStage,
]
BY_NAME = {s.name: s for s in REGISTRY}

__all__ = ["REGISTRY", "BY_NAME", "BuildContext", "Stage", "StageResult", "Unit", "build_stages"]


def build_stages(recipe: Recipe, context: BuildContext) -> list[Stage]:
    """The recipe's stages, in order."""
    return [cls(recipe, context) for cls in REGISTRY if cls.enabled(recipe, context)]
