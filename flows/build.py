"""`build_dataset`: the Prefect flow behind `prefpipe build` and scheduled deployments.

Tasks pass shard *paths* and small stat dicts, never DataFrames. Each task's work is content-keyed
by `pipeline.runner.run_cached`, so a rerun after a crash redoes only unfinished shards.
"""

from __future__ import annotations

from pathlib import Path

from flows.settings import configure

configure()

from prefect import flow, task  # noqa: E402

from pipeline import build as B  # noqa: E402
from pipeline.ingest import ingest_input  # noqa: E402
from pipeline.pairs import source_pairs  # noqa: E402
from pipeline.recipe import Recipe, load_recipe  # noqa: E402
from pipeline.runner import run_cached, stage_key  # noqa: E402
from pipeline.store import data_root as resolve_root  # noqa: E402


@task(name="ingest")
def ingest_task(recipe: Recipe, index: int, input_hash: str, work_root: str) -> dict:
    spec = recipe.inputs[index]
    config = recipe.stage_config("ingest") + spec.model_dump_json(exclude={"path", "license"})
    key = stage_key("ingest", [input_hash], config)
    return run_cached(Path(work_root), "ingest", key,
                      lambda out: ingest_input(spec, recipe.ingest, out))


@task(name="pairs")
def pairs_task(recipe: Recipe, shard: str, shard_key: str, work_root: str) -> dict:
    key = stage_key("pairs", [shard_key], recipe.stage_config("pairs"))
    return run_cached(Path(work_root), "pairs", key,
                      lambda out: source_pairs(Path(shard), out, recipe.ingest.shard_rows))


def shard_inputs(results: list[dict]) -> list[tuple[str, str]]:
    """(shard path, its cache identity) for every output shard of a list of stage results."""
    return [(path, f"{r['key']}/{Path(path).name}") for r in results for path in r["outputs"]]


@task(name="publish")
def publish_task(root: str, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                 stage_results: dict[str, list[dict]], command: str | None) -> str:
    funnel = [B.merge_stats(stage, results) for stage, results in stage_results.items()]
    final = stage_results[list(stage_results)[-1]]
    data = [p for r in final for p in r["outputs"]]
    dropped = [p for results in stage_results.values() for r in results for p in r["dropped"]]
    return str(B.publish_build(Path(root), recipe, recipe_path, inputs, key, funnel, data, dropped,
                               command))


@flow(name="build-dataset", log_prints=False)
def build_dataset(recipe_path: str, data_root: str | None = None, force: bool = False,
                  command: str | None = None) -> dict:
    """Build the dataset a recipe describes and publish a new version (unless one exists)."""
    recipe = load_recipe(recipe_path)
    root = resolve_root(data_root)
    inputs = B.input_manifest(recipe)
    key = B.build_key(recipe, inputs)
    name = recipe.output.dataset
    existing = None if force else B.find_build(root, name, key)
    if existing is not None:
        return {"version_dir": str(existing), "published": False}
    work_root = str(root / "work" / name)

    ingested = [ingest_task.submit(recipe, i, inp["sha256"], work_root)
                for i, inp in enumerate(inputs)]
    ingested = [f.result() for f in ingested]
    pairs = [pairs_task.submit(recipe, shard, skey, work_root)
             for shard, skey in shard_inputs(ingested)]
    pairs = [f.result() for f in pairs]
    version = publish_task(str(root), recipe, str(recipe_path), inputs, key,
                           {"ingest": ingested, "pairs": pairs}, command)
    return {"version_dir": version, "published": True}
