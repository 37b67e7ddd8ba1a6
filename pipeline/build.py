"""Build bookkeeping shared by every way of running a build: the build key (is this build
already published?), the input manifest, the stages' manifest sections, and assembling the
version from stage results once the lineage checks pass."""

from __future__ import annotations

from pathlib import Path

from pipeline.publish.card import write_card
from pipeline.filters.length import length_bias
from pipeline.ids import content_id
from pipeline.incremental import IDS_FILE, write_ids
from pipeline.lineage import check_build
from pipeline.recipe import Recipe
from pipeline.keys import code_version, content_hash
from pipeline.shards import count_rows
from pipeline.stages import BY_NAME, BuildContext, StageResult
from pipeline.stats import StageStats
from pipeline.publish.store import StoreError, find_build, publish, read_manifest  # noqa: F401 - find_build: API
from pipeline.tables import SCHEMA_VERSION


def input_manifest(recipe: Recipe) -> list[dict]:
    return [{"path": spec.path, "format": spec.format, "max_rows": spec.max_rows,
             "license": spec.license, "sha256": content_hash(Path(spec.path))}
            for spec in recipe.inputs]


def build_key(recipe: Recipe, inputs: list[dict]) -> str:
    """Same recipe (input and model paths aside), same input bytes, same bytes of every other file
    and model directory it names and same code -> same key."""
    data = recipe.keyed()
    config = {k: v for k, v in data.items() if k != "inputs"}
    return content_id("b", config, [(i["format"], i["max_rows"], i["sha256"]) for i in inputs],
                      Recipe.file_hashes(data), code_version())


def merge_stats(stage: str, results: list[StageResult]) -> StageStats:
    return StageStats.total(stage, [StageStats.from_dict(r.stats) for r in results])


def outputs(results: list[StageResult], kind: str = "outputs") -> list[Path]:
    return [Path(p) for r in results for p in getattr(r, kind)]


def manifest_extras(recipe: Recipe, stage_results: dict[str, list[StageResult]], context: BuildContext
                    ) -> tuple[dict, dict[str, Path]]:
    """(manifest sections, extra files to publish): each stage's own, then the length bias."""
    extra: dict = {}
    files: dict[str, Path] = {}
    for name, results in stage_results.items():
        sections, stage_files = BY_NAME[name](recipe, context).manifest(results)
        for key, value in sections.items():
            extra[key] = {**extra[key], **value} if isinstance(value, dict) and key in extra else value
        files.update(stage_files)
    extra["length_bias"] = length_bias(outputs(stage_results[list(stage_results)[-1]]))
    return extra, files


def record_inputs(plans: list[dict], ingested: list[StageResult]) -> list[dict]:
    """The manifest's inputs: what each input was, and how many of its rows builds have read."""
    read = iter(ingested)
    out = []
    for plan in plans:
        total = plan["start_row"] if plan["skip"] else plan["start_row"] + next(read).stats["rows_in"]
        out.append({k: plan.get(k) for k in ("path", "format", "max_rows", "license", "sha256", "bytes",
                                              "start_offset", "start_row")} | {"rows_total": total})
    return out

def publish_build(root: Path, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                  stage_results: dict[str, list[StageResult]], command: str | None = None,
                  parent: Path | None = None, work_dir: Path | None = None, force: bool = False) -> Path:
    """Publish the last stage's outputs (plus the parent version's rows for incremental builds).

    `stage_results` maps stage name -> its results, in build order (the first stage ingests);
    every stage's dropped rows are published; the ingested conversations feed the seen-ids index.
    """
    ingested = outputs(next(iter(stage_results.values())))
    extra_manifest, extra_files = manifest_extras(recipe, stage_results, BuildContext(Path(work_dir or root)))
    funnel = [merge_stats(stage, results).check().to_dict() for stage, results in stage_results.items()]
    data = outputs(stage_results[list(stage_results)[-1]])
    dropped = outputs([r for rs in stage_results.values() for r in rs], "dropped")
    check_build(funnel, ingested, data, dropped,
                {stage: outputs(results) for stage, results in stage_results.items()})
    parent_rows = []
    if parent is not None:
        schema = read_manifest(parent).get("schema_version")
        if schema != SCHEMA_VERSION:
            raise StoreError(f"cannot add to {parent.name}: it was published with table schema {schema}, this "
                             f"code writes {SCHEMA_VERSION}; rebuild without --incremental to start afresh")
        parent_rows = sorted((parent / "data").glob("*.parquet"))
    ids_path = write_ids(Path(work_dir or root) / f".ids-{key}.parquet", ingested, parent)
    manifest = {
        "recipe": recipe.resolved(),
        "recipe_path": recipe_path,
        "recipe_hash": recipe.hash(),
        "build_key": key,
        "inputs": inputs,
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "funnel": funnel,
        "command": command or f"prefpipe build {recipe_path}",
        **(extra_manifest or {}),
    }
    if parent is not None:
        manifest["incremental"] = {"parent_rows_carried": count_rows(parent_rows),
                                   "rows_added": count_rows(data)}
    try:
        return publish(root, recipe.output.dataset, parent_rows + data, dropped, manifest, write_card=write_card,
                       extra_files={IDS_FILE: ids_path, **(extra_files or {})},
                       unless_build_key=None if force else key)
    finally:
        ids_path.unlink(missing_ok=True)
