"""`build_dataset`: the Prefect flow behind `prefpipe build` and scheduled deployments.

Tasks pass shard *paths* and small stat dicts, never DataFrames. Every stage task is keyed by
input content + stage config + code version (`pipeline.runner.stage_key`), both as its Prefect
cache key and as the directory its output lands in, so a rerun after a crash redoes only
unfinished shards and a repeated build computes nothing.
"""

from __future__ import annotations

from pathlib import Path

from flows.settings import configure

configure()

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from pipeline import build as B  # noqa: E402
from pipeline import incremental  # noqa: E402
from pipeline.ingest import ingest_input  # noqa: E402
from pipeline.pairs import source_pairs  # noqa: E402
from pipeline.recipe import Recipe, load_recipe  # noqa: E402
from pipeline.runner import run_cached, stage_key  # noqa: E402
from pipeline.store import data_root as resolve_root  # noqa: E402
from pipeline.store import list_versions, read_manifest, version_name  # noqa: E402


def stage_cache_key(context, parameters) -> str:
    """Prefect cache key = the stage's content key (input content + config + code version)."""
    return parameters["key"]


STAGE_TASK = dict(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")


def submit(task_fn, **parameters):
    """Submit a stage task; if its output directory is gone (work dir cleaned), refresh the
    Prefect cache instead of trusting a cached result that points at missing shards."""
    final = Path(parameters["work_root"]) / task_fn.name / parameters["key"]
    if not (final / "_stats.json").exists():
        task_fn = task_fn.with_options(refresh_cache=True)
    return task_fn.submit(**parameters)


@task(name="ingest", **STAGE_TASK)
def ingest_task(recipe: Recipe, plan: dict, index: int, key: str, work_root: str) -> dict:
    spec = recipe.inputs[index]
    return run_cached(Path(work_root), "ingest", key, lambda out: ingest_input(
        spec, recipe.ingest, out, plan["start_offset"], plan["start_row"]))


@task(name="incremental", **STAGE_TASK)
def seen_task(shard: str, parents: list[str], key: str, work_root: str, shard_rows: int) -> dict:
    seen = incremental.seen_ids([Path(p) for p in parents])
    return run_cached(Path(work_root), "incremental", key,
                      lambda out: incremental.drop_seen(Path(shard), out, seen, shard_rows))


@task(name="pairs", **STAGE_TASK)
def pairs_task(recipe: Recipe, shard: str, key: str, work_root: str) -> dict:
    return run_cached(Path(work_root), "pairs", key,
                      lambda out: source_pairs(Path(shard), out, recipe.ingest.shard_rows))


def shard_inputs(results: list[dict]) -> list[tuple[str, str]]:
    """(shard path, its content identity) for every output shard of a list of stage results."""
    return [(path, f"{r['key']}/{Path(path).name}") for r in results for path in r["outputs"]]


def map_stage(task_fn, stage: str, results: list[dict], config: str, **kwargs) -> list[dict]:
    """Submit `task_fn` once per output shard of the previous stage; wait for all."""
    futures = [submit(task_fn, shard=shard, key=stage_key(stage, [ident], config), **kwargs)
               for shard, ident in shard_inputs(results)]
    return [f.result() for f in futures]


@task(name="publish")
def publish_task(root: str, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                 stage_results: dict[str, list[dict]], command: str | None, parent: str | None,
                 work_dir: str) -> str:
    return str(B.publish_build(Path(root), recipe, recipe_path, inputs, key, stage_results, command,
                               Path(parent) if parent else None, work_dir=Path(work_dir)))


def publish_artifacts(version_dir: Path, published: bool) -> None:
    manifest = read_manifest(version_dir)
    key = manifest["name"].lower().replace("_", "-").replace(".", "-")
    create_table_artifact(key=f"{key}-funnel", table=[
        {k: (", ".join(f"{r}: {n}" for r, n in v.items()) if k == "reasons" else v) for k, v in s.items()}
        for s in manifest["funnel"]], description=f"Row funnel of {manifest['name']}@{manifest['version']}")
    state = "published" if published else "unchanged (an identical build exists)"
    create_markdown_artifact(key=f"{key}-version", markdown=(
        f"### {manifest['name']}@{manifest['version']}: {state}\n\n"
        f"- rows: {manifest['rows']} (dropped: {manifest['rows_dropped']})\n"
        f"- version: `{version_dir}`\n- data card: `{version_dir / 'README.md'}`\n"
        f"- report: `{version_dir / 'report.html'}`\n- parent: {manifest.get('parent_version')}\n"))


@flow(name="build-dataset", log_prints=False)
def build_dataset(recipe_path: str, data_root: str | None = None, force: bool = False,
                  incremental_run: bool = False, command: str | None = None) -> dict:
    """Build the dataset a recipe describes and publish a new version.

    Unless `force`, an identical earlier build (same recipe, input bytes and code) is reported
    instead of republished. `incremental_run` reads only what earlier versions have not seen and
    publishes the parent's rows plus the new ones; with nothing new it publishes nothing.
    """
    recipe = load_recipe(recipe_path)
    root = resolve_root(data_root)
    name = recipe.output.dataset
    inputs = B.input_manifest(recipe)
    key = B.build_key(recipe, inputs)
    existing = None if force else B.find_build(root, name, key)
    if existing is not None:
        publish_artifacts(existing, published=False)
        return {"version_dir": str(existing), "published": False}

    versions = list_versions(root, name)
    parent = root / "datasets" / name / version_name(versions[-1]) if incremental_run and versions else None
    plans = incremental.plan_inputs(inputs, read_manifest(parent) if parent else None)
    if parent is not None and all(p["skip"] for p in plans):
        return {"version_dir": str(parent), "published": False}
    work_root = str(root / "work" / name)

    ingest_config = recipe.stage_config("ingest")
    ingested = []
    for i, plan in enumerate(plans):
        if plan["skip"]:
            continue
        spec = recipe.inputs[i].model_dump_json(exclude={"path", "license"})
        ikey = stage_key("ingest", [plan["sha256"], str(plan["start_offset"])], ingest_config + spec)
        ingested.append(submit(ingest_task, recipe=recipe, plan=plan, index=i, key=ikey, work_root=work_root))
    stage_results = {"ingest": [f.result() for f in ingested]}
    conversations = stage_results["ingest"]
    if parent is not None:
        parents = [str(root / "datasets" / name / version_name(v)) for v in versions]
        conversations = stage_results["incremental"] = map_stage(
            seen_task, "incremental", conversations, ",".join(parents), parents=parents,
            work_root=work_root, shard_rows=recipe.ingest.shard_rows)
        if sum(r["stats"]["rows_out"] for r in conversations) == 0:
            return {"version_dir": str(parent), "published": False}

    stage_results["pairs"] = map_stage(pairs_task, "pairs", conversations, recipe.stage_config("pairs"),
                                       recipe=recipe, work_root=work_root)

    for plan, result in zip([p for p in plans if not p["skip"]], stage_results["ingest"]):
        plan["rows_total"] = plan["start_row"] + result["stats"]["rows_in"]
    inputs_out = [{k: p[k] for k in ("path", "format", "max_rows", "license", "sha256", "bytes",
                                     "start_offset", "start_row")} | {"rows_total": p.get("rows_total", p["start_row"])}
                  for p in plans]
    version = publish_task(str(root), recipe, str(recipe_path), inputs_out, key, stage_results,
                           command, str(parent) if parent else None, work_root)
    publish_artifacts(Path(version), published=True)
    return {"version_dir": version, "published": True}
