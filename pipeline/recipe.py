"""The YAML recipe: what to ingest, which stages to run with which parameters, what to publish.

Validated by pydantic before any work: unknown keys are rejected and every error names the file
and the field (`recipe.yaml: inputs.0.format: ...`). YAML is loaded with the safe loader only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.ids import canonical_json, content_id
from pipeline.names import check_dataset_name

FORMATS = ("auto", "openai", "sharegpt", "hh_rlhf", "alpaca", "prompt", "pairs", "pairwise_labelled")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    path: str = Field(description="File or directory (JSONL[.gz], JSON array, Parquet, HF save_to_disk)")
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    license: str | None = Field(None, description="Licence of the input, shown on the data card")
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows")


class IngestConfig(Strict):
    shard_rows: int = Field(1000, ge=1, le=1_000_000)
    max_text_chars: int = Field(100_000, ge=1, description="Longer messages are quarantined")
    max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Longer raw lines are quarantined")


class PairsConfig(Strict):
    rule: Literal["source"] = Field(
        "source", description="source: the input's own chosen/rejected responses")


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
    pairs: PairsConfig = PairsConfig()
    output: OutputConfig

    @model_validator(mode="after")
    def _distinct_inputs(self) -> "Recipe":
        paths = [i.path for i in self.inputs]
        if len(set(paths)) != len(paths):
            raise ValueError("inputs: the same path is listed twice")
        return self

    def resolved(self) -> dict:
        """The recipe as plain data (defaults filled in), as recorded in manifests."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        return content_id("r", self.resolved())

    def stage_config(self, *sections: str) -> str:
        """Canonical JSON of some recipe sections: part of a stage's cache key."""
        data = self.resolved()
        return canonical_json({s: data.get(s) for s in sections})


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def parse_recipe(data: object, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe data; input paths are resolved against `base_dir` and must exist."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_error(source, err)) from None
    if base_dir is not None:
        inputs = []
        for i, spec in enumerate(recipe.inputs):
            path = Path(spec.path)
            path = path if path.is_absolute() else (base_dir / path)
            if not path.exists():
                raise RecipeError(f"{source}: inputs.{i}.path: no such file or directory: {spec.path}")
            inputs.append(spec.model_copy(update={"path": str(path.resolve())}))
        recipe = recipe.model_copy(update={"inputs": inputs})
    return recipe


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
