"""Build bookkeeping shared by every way of running a build: the build key (is this build
already published?), the input manifest, and assembling the version from stage results."""

from __future__ import annotations

from pathlib import Path

from pipeline.card import write_card
from pipeline.ids import content_id
from pipeline.recipe import Recipe
from pipeline.runner import code_version, content_hash
from pipeline.stats import StageStats
from pipeline.store import find_build, publish  # noqa: F401 - re-exported
from pipeline.tables import SCHEMA_VERSION


def input_manifest(recipe: Recipe) -> list[dict]:
    return [{"path": spec.path, "format": spec.format, "max_rows": spec.max_rows,
             "license": spec.license, "sha256": content_hash(Path(spec.path))}
            for spec in recipe.inputs]


def build_key(recipe: Recipe, inputs: list[dict]) -> str:
    """Same recipe (input paths aside), same input bytes and same code -> same key."""
    config = {k: v for k, v in recipe.resolved().items() if k != "inputs"}
    return content_id("b", config, [(i["format"], i["max_rows"], i["sha256"]) for i in inputs],
                       code_version())


def merge_stats(stage: str, results: list[dict]) -> StageStats:
    return StageStats.total(stage, [StageStats.from_dict(r["stats"]) for r in results])


def publish_build(root: Path, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                  funnel: list[StageStats], data_files: list[str], dropped_files: list[str],
                  command: str | None = None) -> Path:
    manifest = {
        "recipe": recipe.resolved(),
        "recipe_path": recipe_path,
        "recipe_hash": recipe.hash(),
        "build_key": key,
        "inputs": inputs,
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "funnel": [s.check().to_dict() for s in funnel],
        "command": command or f"prefpipe build {recipe_path}",
    }
    return publish(root, recipe.output.dataset, [Path(p) for p in data_files],
                   [Path(p) for p in dropped_files], manifest, write_card=write_card)
