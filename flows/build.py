"""`build_dataset`: the Prefect flow behind `prefpipe build` and scheduled deployments.

ingest -> [incremental] -> [dedup] -> [decontam] -> [generate -> annotate] -> pairs
       -> [length] -> [margin] -> [ches] -> publish (+ card, artifacts)

Stages in brackets run only when the recipe names them. Tasks pass shard *paths* and small stat
dicts, never DataFrames. Every stage task is keyed by input content + stage config + code version
(`pipeline.runner.stage_key`), both as its Prefect cache key and as the directory its output lands
in, so a rerun after a crash redoes only unfinished shards and a repeated build computes nothing.
Shard-level stages fan out one task per shard (over Dask workers with a DaskTaskRunner); stages
over the whole build (dedup, decontam, margin budget, CHES cut) and model stages (one engine set
per stage run) are one task each.
"""

from __future__ import annotations

from pathlib import Path

from flows.settings import configure

configure()

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from pipeline import build as B  # noqa: E402
from pipeline import incremental, stages  # noqa: E402
from pipeline.engines.http_engine import EngineUnavailable  # noqa: E402
from pipeline.ingest import ingest_input  # noqa: E402
from pipeline.recipe import Recipe, load_recipe  # noqa: E402
from pipeline.ids import content_id  # noqa: E402
from pipeline.runner import is_complete, run_cached, stage_key  # noqa: E402
from pipeline.store import data_root as resolve_root  # noqa: E402
from pipeline.store import AlreadyPublished, list_versions, read_manifest, version_name  # noqa: E402


def stage_cache_key(context, parameters) -> str:
    """Prefect cache key = the stage's content key (input content + config + code version) within
    this build's data root: a result cached for one root never answers for another."""
    return content_id("", parameters["key"], str(Path(parameters["work_root"]).resolve()))


STAGE_TASK = dict(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")


def transient(task, task_run, state) -> bool:
    """Retry only engine outages (HTTP servers down or overloaded past the engine's own retries),
    never bad data or bugs."""
    try:
        state.result()
    except EngineUnavailable:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


MODEL_TASK = dict(STAGE_TASK, retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
                  retry_condition_fn=transient)


def submit(task_fn, **parameters):
    """Submit a stage task; unless its output directory under this root is complete (every file
    there with its recorded checksum), refresh the Prefect cache instead of trusting a cached
    result: the stage runs again."""
    final = Path(parameters["work_root"]) / task_fn.name / parameters["key"]
    if not is_complete(final):
        task_fn = task_fn.with_options(refresh_cache=True)
    return task_fn.submit(**parameters)


def run(task_fn, **parameters):
    return submit(task_fn, **parameters).result()


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


@task(name="dedup", **STAGE_TASK)
def dedup_task(recipe: Recipe, inputs: list, previous: list[str], key: str, work_root: str) -> dict:
    return stages.run_dedup(recipe, inputs, Path(work_root), previous)


@task(name="decontam", **STAGE_TASK)
def decontam_task(recipe: Recipe, inputs: list, key: str, work_root: str) -> dict:
    return stages.run_decontam(recipe, inputs, Path(work_root))


@task(name="generate", **MODEL_TASK)
def generate_task(recipe: Recipe, inputs: list, key: str, work_root: str) -> list[dict]:
    return stages.run_generate(recipe, inputs, Path(work_root))


@task(name="annotate", **MODEL_TASK)
def annotate_task(recipe: Recipe, inputs: list, key: str, work_root: str) -> list[dict]:
    return stages.run_annotate(recipe, inputs, Path(work_root))


@task(name="pairs", **STAGE_TASK)
def source_pairs_task(recipe: Recipe, shard: str, key: str, work_root: str) -> dict:
    return stages.source_pairs_one(recipe, shard, key, Path(work_root))


@task(name="pairs", **STAGE_TASK)
def scored_pairs_task(recipe: Recipe, candidates: dict, annotations: dict, key: str, work_root: str) -> dict:
    return stages.scored_pairs_one(recipe, candidates, annotations, key, Path(work_root))


@task(name="length", **STAGE_TASK)
def length_task(recipe: Recipe, shard: str, key: str, work_root: str) -> dict:
    return stages.length_one(recipe, shard, key, Path(work_root))


@task(name="margin", **STAGE_TASK)
def margin_task(recipe: Recipe, inputs: list, key: str, work_root: str) -> dict:
    return stages.run_margin(recipe, inputs, Path(work_root))


@task(name="ches", **STAGE_TASK)
def ches_task(recipe: Recipe, inputs: list, key: str, work_root: str) -> dict:
    return stages.run_ches(recipe, inputs, Path(work_root))


@task(name="publish")
def publish_task(root: str, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                 stage_results: dict[str, list[dict]], command: str | None, parent: str | None,
                 work_dir: str, force: bool) -> dict:
    extra, files = stages.manifest_extras(recipe, stage_results)
    try:
        path = B.publish_build(Path(root), recipe, recipe_path, inputs, key, stage_results, command,
                               Path(parent) if parent else None, extra, Path(work_dir), files, force)
    except AlreadyPublished as same:
        return {"version_dir": str(same.path), "published": False}
    return {"version_dir": str(path), "published": True}


def map_shards(task_fn, stage: str, results: list[dict], config: str, **kwargs) -> list[dict]:
    """One task per output shard of the previous stage; wait for all."""
    futures = [submit(task_fn, shard=shard, key=stage_key(stage, [ident], config), **kwargs)
               for shard, ident in stages.shard_inputs(results)]
    return [f.result() for f in futures]


def whole(task_fn, stage: str, results: list[dict], config: str, **kwargs) -> list[dict]:
    """One task over every output shard of the previous stage."""
    inputs = stages.shard_inputs(results)
    out = run(task_fn, inputs=inputs, key=stages.build_key(stage, inputs, config), **kwargs)
    return out if isinstance(out, list) else [out]


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
    instead of republished. `incremental_run` reads only what earlier versions have not seen,
    dedups against them, and publishes the parent's rows plus the new ones; with nothing new it
    publishes nothing.
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
    version_dirs = [root / "datasets" / name / version_name(v) for v in versions]
    parent = version_dirs[-1] if incremental_run and versions else None
    plans = incremental.plan_inputs(inputs, read_manifest(parent) if parent else None)
    if parent is not None and all(p["skip"] for p in plans):
        return {"version_dir": str(parent), "published": False}
    work_root = str(root / "work" / name)
    common = {"recipe": recipe, "work_root": work_root}

    ingest_config = recipe.stage_config("ingest")
    futures = []
    for i, plan in enumerate(plans):
        if plan["skip"]:
            continue
        spec = recipe.inputs[i].model_dump_json(exclude={"path", "license"})
        ikey = stage_key("ingest", [plan["sha256"], str(plan["start_offset"])], ingest_config + spec)
        futures.append(submit(ingest_task, plan=plan, index=i, key=ikey, **common))
    results = {"ingest": [f.result() for f in futures]}
    conversations = results["ingest"]

    if parent is not None:
        parents = [str(p) for p in version_dirs]
        conversations = results["incremental"] = map_shards(
            seen_task, "incremental", conversations, ",".join(parents), parents=parents,
            work_root=work_root, shard_rows=recipe.ingest.shard_rows)
        if sum(r["stats"]["rows_out"] for r in conversations) == 0:
            return {"version_dir": str(parent), "published": False}
    if recipe.dedup is not None:
        previous = [str(v / "index" / "dedup") for v in version_dirs if (v / "index" / "dedup").is_dir()] \
            if parent is not None else []
        conversations = results["dedup"] = whole(dedup_task, "dedup", conversations,
                                                 stages.dedup_config(recipe, previous), previous=previous,
                                                 **common)
    if recipe.decontam is not None:
        conversations = results["decontam"] = whole(decontam_task, "decontam", conversations,
                                                    recipe.stage_config("decontam"), **common)

    if recipe.generate is not None:
        candidates = results["generate"] = whole(generate_task, "generate", conversations,
                                                 recipe.stage_config("generate"), **common)
        annotations = results["annotate"] = whole(annotate_task, "annotate", candidates,
                                                  recipe.stage_config("annotate", "generate"), **common)
        config = recipe.stage_config("pairs")
        pairs = [submit(scored_pairs_task, candidates=c, annotations=a,
                        key=stage_key("pairs", [c["key"], a["key"]], config), **common)
                 for c, a in zip(candidates, annotations)]
        results["pairs"] = [f.result() for f in pairs]
    else:
        results["pairs"] = map_shards(source_pairs_task, "pairs", conversations,
                                      recipe.stage_config("pairs"), **common)

    filters = recipe.filters
    if filters.length is not None:
        results["length"] = map_shards(length_task, "length", results["pairs"],
                                       recipe.stage_config("filters"), **common)
    last = list(results.values())[-1]
    if filters.margin is not None:
        last = results["margin"] = whole(margin_task, "margin", last, recipe.stage_config("filters"), **common)
    if filters.ches is not None:
        last = results["ches"] = whole(ches_task, "ches", last, recipe.stage_config("filters"), **common)

    for plan, result in zip([p for p in plans if not p["skip"]], results["ingest"]):
        plan["rows_total"] = plan["start_row"] + result["stats"]["rows_in"]
    inputs_out = [{k: p.get(k) for k in ("path", "format", "max_rows", "license", "sha256", "bytes",
                                         "start_offset", "start_row")}
                  | {"rows_total": p.get("rows_total", p["start_row"])} for p in plans]
    outcome = publish_task(str(root), recipe, str(recipe_path), inputs_out, key, results,
                           command, str(parent) if parent else None, work_root, force)
    publish_artifacts(Path(outcome["version_dir"]), published=outcome["published"])
    return outcome


def build_flow(dask_address: str | None = None):
    """`build_dataset` on the local runner, or with its tasks on an existing Dask cluster."""
    if not dask_address:
        return build_dataset
    from prefect_dask import DaskTaskRunner

    return build_dataset.with_options(task_runner=DaskTaskRunner(address=dask_address))
