"""The YAML recipe: what to ingest, which stages to run with which parameters, what to publish.

Validated by pydantic before any work: unknown keys are rejected and every error names the file
and the field (`recipe.yaml: inputs.0.format: ...`). YAML is loaded with the safe loader only.
Stage sections are optional: a stage runs only when the recipe names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.annotate.config import AnnotateConfig
from pipeline.config import FORMATS, IngestConfig, InputSpec, RecipeError, Strict, format_error
from pipeline.engines.base import GENERATE, HIDDEN_STATES, REWARD, SCORE, TOP_LOGPROBS
from pipeline.filters.ches import ChesConfig
from pipeline.filters.decontam import DecontamConfig
from pipeline.filters.dedup import DedupConfig
from pipeline.filters.length import LengthConfig
from pipeline.filters.margin import MarginConfig
from pipeline.generate import GenerateConfig
from pipeline.ids import canonical_json, content_id
from pipeline.names import check_dataset_name
from pipeline.pairs import PairsConfig

__all__ = ["FORMATS", "IngestConfig", "InputSpec", "Recipe", "RecipeError", "Strict", "load_recipe",
           "parse_recipe"]

# What each engine kind can do (pipeline/engines/*): checked against what the recipe asks for.
ENGINE_CAPABILITIES = {
    "vllm": {GENERATE, SCORE, TOP_LOGPROBS},
    "transformers": {GENERATE, SCORE, TOP_LOGPROBS, HIDDEN_STATES, REWARD},
    "http": {GENERATE, SCORE, TOP_LOGPROBS},
}
ANNOTATOR_NEEDS = {"judge": {GENERATE}, "strong": {SCORE}, "weak": {SCORE}, "reward": {REWARD}}


class FiltersConfig(Strict):
    """Pair filters, applied in this order: length guard, margin, CHES."""

    length: LengthConfig | None = None
    margin: MarginConfig | None = None
    ches: ChesConfig | None = None


class OutputConfig(Strict):
    dataset: str
    license: str | None = Field(None, description="Licence of the published dataset")

    @field_validator("dataset")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dataset_name(v)


class Recipe(Strict):
    description: str = ""
    inputs: Annotated[list[InputSpec], Field(min_length=1)]
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig | None = Field(None, description="Deduplicate prompts after ingest")
    decontam: DecontamConfig | None = Field(None, description="Drop prompts that overlap benchmarks")
    generate: GenerateConfig | None = Field(None, description="Candidate responses per prompt")
    annotate: AnnotateConfig | None = Field(None, description="Score candidates")
    pairs: PairsConfig = PairsConfig()
    filters: FiltersConfig = FiltersConfig()
    output: OutputConfig

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        paths = [i.path for i in self.inputs]
        if len(set(paths)) != len(paths):
            raise ValueError("inputs: the same path is listed twice")
        if self.pairs.rule == "source":
            if self.annotate is not None:
                raise ValueError("pairs.rule: 'source' ignores annotation scores; choose a scored rule "
                                 "(best_vs_worst, best_vs_random_lower, all_above_margin, pairwise_winners)")
        elif self.annotate is None:
            raise ValueError(f"pairs.rule: '{self.pairs.rule}' needs scores: add an annotate section")
        if self.pairs.rule == "pairwise_winners" and self.annotate.method != "judge_pairwise":
            raise ValueError("pairs.rule: 'pairwise_winners' needs annotate.method: judge_pairwise")
        if self.annotate is not None and self.generate is None:
            raise ValueError("annotate: needs candidates: add a generate section (models and/or "
                             "include_source_responses: true)")
        if self.generate is not None and self.annotate is None:
            raise ValueError("generate: candidates need scores to become pairs: add an annotate section")
        self._check_engines()
        return self

    def _check_engines(self) -> None:
        """A stage asking an engine for what it cannot do fails here, before any work."""
        uses: list[tuple[str, str, set[str]]] = []
        for i, m in enumerate(self.generate.models if self.generate else []):
            uses.append((f"generate.models.{i}", m.engine, {GENERATE}))
        if self.annotate is not None:
            for role in self.annotate.roles():
                ref = getattr(self.annotate.models, role)
                needs = set(ANNOTATOR_NEEDS[role])
                if role == "judge" and self.annotate.expectation:
                    needs.add(TOP_LOGPROBS)
                uses.append((f"annotate.models.{role}", ref.engine, needs))
        for where, engine, needs in uses:
            missing = sorted(needs - ENGINE_CAPABILITIES[engine])
            if missing:
                raise ValueError(f"{where}: engine {engine} does not support {', '.join(missing)} "
                                 f"(it supports {', '.join(sorted(ENGINE_CAPABILITIES[engine]))})")

    def resolved(self) -> dict:
        """The recipe as plain data (defaults filled in), as recorded in manifests."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        return content_id("r", self.resolved())

    def stage_config(self, *sections: str) -> str:
        """Canonical JSON of some recipe sections: part of a stage's cache key."""
        data = self.resolved()
        return canonical_json({s: data.get(s) for s in sections})


def parse_recipe(data: object, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe data; input paths are resolved against `base_dir` and must exist."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_error(source, err)) from None
    if base_dir is not None:
        inputs = []
        for i, spec in enumerate(recipe.inputs):
            path = Path(spec.path)
            path = path if path.is_absolute() else (base_dir / path)
            if not path.exists():
                raise RecipeError(f"{source}: inputs.{i}.path: no such file or directory: {spec.path}")
            inputs.append(spec.model_copy(update={"path": str(path.resolve())}))
        recipe = recipe.model_copy(update={"inputs": inputs})
        if recipe.decontam is not None:
            recipe = recipe.model_copy(update={"decontam": _resolve_decontam(recipe.decontam, base_dir, source)})
    return recipe


def _resolve_decontam(config: DecontamConfig, base_dir: Path, source: str) -> DecontamConfig:
    """Paths of the benchmark registry relative to the recipe; every benchmark file must exist."""
    from pipeline.filters.decontam import load_registry

    update = {k: str((base_dir / getattr(config, k)).resolve())
              for k in ("registry", "benchmarks_root") if getattr(config, k)}
    config = config.model_copy(update=update)
    try:
        root, specs = load_registry(config.registry, config.benchmarks_root, config.benchmarks)
    except (OSError, ValueError) as err:
        raise RecipeError(f"{source}: decontam.registry: {err}") from None
    missing = [str(root / s.file) for s in specs if not (root / s.file).is_file()]
    if missing:
        raise RecipeError(f"{source}: decontam.benchmarks_root: {len(missing)} benchmark file(s) not found, "
                          f"e.g. {missing[0]} (point decontam.benchmarks_root at your copies, or list "
                          f"the ones you have in decontam.benchmarks)")
    return config


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read recipe: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from None
    return parse_recipe(data, source=str(path), base_dir=path.resolve().parent)


def export_json_schema(path: Path) -> None:
    path.write_text(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")
