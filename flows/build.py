"""`build_dataset`: the Prefect flow behind `prefpipe build` and scheduled deployments.

ingest -> [incremental] -> [dedup] -> [decontam] -> [generate -> annotate] -> pairs
       -> [length] -> [margin] -> [ches] -> publish (+ card, artifacts)

Stages in brackets run only when the recipe names them (`pipeline.stages.build_stages`); this
flow maps any stage the same way (`run_stage`) and knows none by name. Tasks pass shard *paths*
and `StageResult`s, never DataFrames. Every unit of work is keyed by its input content + stage
config + code version (`Stage.key`), both in its Prefect cache key (with the data root) and as the
directory its output lands in, so a rerun after a crash redoes only unfinished shards and a
repeated build computes nothing. Per-shard stages, model stages included, fan out one task per
shard (over Dask workers with a DaskTaskRunner); whole-build stages are one task each. A model
task takes its engines from its process's resident pool (`pipeline.engines.pool`): loaded once
per Dask worker and kept until the worker stops (`engine_pool_plugin`); in a local run the flow
closes them after each model stage, so one stage's engines are loaded at a time.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flows.settings import configure

configure()

from prefect import flow, get_run_logger, tags, task  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from pipeline import build as B  # noqa: E402
from pipeline import incremental, progress  # noqa: E402
from pipeline.engines import pool  # noqa: E402
from pipeline.engines.http_engine import EngineUnavailable  # noqa: E402
from pipeline.ids import content_id  # noqa: E402
from pipeline.lineage import LineageError, expected_rows_in  # noqa: E402
from pipeline.recipe import Recipe, load_recipe  # noqa: E402
from pipeline.runner import run_units, units_complete  # noqa: E402
from pipeline.stages import BuildContext, Stage, StageResult, Unit, build_stages  # noqa: E402
from pipeline.publish.store import data_root as resolve_root  # noqa: E402
from pipeline.publish.store import AlreadyPublished, list_versions, read_manifest, version_name  # noqa: E402


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


@functools.cache
def stage_task(name: str, uses_engines: bool):
    """The Prefect task of one stage: any stage over some of its units (the executor knows nothing
    of what the stage does). Named after the stage, in the UI and in Dask's task keys."""

    def run(stage: Stage, units: list[Unit], key: str, work_root: str) -> list[StageResult]:
        return run_units(stage, units)

    run.__name__ = run.__qualname__ = f"{name}_task"
    return task(run, name=name, **(MODEL_TASK if uses_engines else STAGE_TASK))


@task(name="publish")
def publish_task(root: str, recipe: Recipe, recipe_path: str, inputs: list[dict], key: str,
                 stage_results: dict[str, list[StageResult]], command: str | None, parent: str | None,
                 work_dir: str, force: bool) -> dict:
    try:
        path = B.publish_build(Path(root), recipe, recipe_path, inputs, key, stage_results, command,
                               Path(parent) if parent else None, Path(work_dir), force)
    except AlreadyPublished as same:
        return {"version_dir": str(same.path), "published": False}
    return {"version_dir": str(path), "published": True}


def run_stage(stage: Stage, results: dict[str, list[StageResult]]) -> list[StageResult]:
    """The stage's prelude (if it has one) over the previous stage's results, then the stage over
    the prelude's (CHES: scoring per shard, then the cut over the whole build)."""
    upstream = list(results.values())[-1] if results else []
    if stage.prelude is not None:
        prelude = stage.prelude(stage.recipe, stage.context)
        upstream = run_step(prelude, upstream, results)
        if dropped := B.merge_stats(prelude.name, upstream).rows_dropped:  # it has no funnel row
            raise LineageError(f"{prelude.name} dropped {dropped} {prelude.unit_in}; a prelude must keep every row")
    return run_step(stage, upstream, results)


def run_step(stage: Stage, upstream: list[StageResult], results: dict[str, list[StageResult]]
             ) -> list[StageResult]:
    """One Prefect task per unit (per-shard stages) or one for all units (whole-build stages); each
    keyed by its units' content."""
    units = stage.units(upstream, results)
    groups = [[u] for u in units] if stage.kind == "shard" else [units]
    log = get_run_logger()
    log.info("%s: %d unit(s) of work in %d task(s)", stage.name, len(units), len(groups))
    expected = expected_rows_in([B.merge_stats(n, rs).to_dict() for n, rs in results.items()],
                                {"unit_in": stage.unit_in})
    for label in stage.progress_labels():
        progress.expect(label, expected[0] if expected else None)
    futures = []
    for group in groups:
        task_fn = stage_task(stage.name, bool(stage.roles))
        if not units_complete(stage, group):
            task_fn = task_fn.with_options(refresh_cache=True)  # never trust a result whose files are gone
        key = content_id(stage.name, [stage.key(u) for u in group])
        futures.append(task_fn.submit(stage=stage, units=group, key=key, work_root=str(stage.context.work_root)))
    results = [r for f in futures for r in f.result()]
    if stage.roles:  # local run: its engines were loaded here; on Dask this process holds none
        pool.close_all()
    total = B.merge_stats(stage.name, results)
    for label in stage.progress_labels():
        progress.finish(label, total.rows_in)
    log.info("%s: read %d %s, kept %d, dropped %d %s, wrote %d %s (%d of %d unit(s) reused)", stage.name,
             total.rows_in, stage.unit_in, total.rows_out, total.rows_dropped, dict(total.reasons),
             total.outputs_written, stage.unit_out, sum(r.cached for r in results), len(results))
    return results


def publish_artifacts(version_dir: Path, published: bool) -> None:
    manifest = read_manifest(version_dir)
    key = manifest["name"].lower().replace("_", "-").replace(".", "-")
    columns = ["stage", "unit_in", "rows_in", "rows_out", "rows_dropped", "reasons", "outputs_written", "unit_out"]
    create_table_artifact(key=f"{key}-funnel", table={  # columns in funnel order, stages in build order
        c: [", ".join(f"{r}: {n}" for r, n in s[c].items()) if c == "reasons" else s.get(c) for s in manifest["funnel"]]
        for c in columns}, description=f"Row funnel of {manifest['name']}@{manifest['version']}")
    state = "published" if published else "unchanged (an identical build exists)"
    create_markdown_artifact(key=f"{key}-version", markdown=(
        f"### {manifest['name']}@{manifest['version']}: {state}\n\n"
        f"- rows: {manifest['rows']} (dropped: {manifest['rows_dropped']})\n"
        f"- version: `{version_dir}`\n- data card: `{version_dir / 'README.md'}`\n"
        f"- report: `{version_dir / 'report.html'}`\n- parent: {manifest.get('parent_version')}\n"))


def run_name() -> str:
    """`DATASET vNNNN` (the version this build expects to publish) or `DATASET incremental`."""
    params = flow_run.parameters
    try:
        name = load_recipe(params["recipe_path"], check_env=False).output.dataset
    except Exception:  # noqa: BLE001 - the flow itself reports a bad recipe
        return "build"
    if params.get("incremental_run"):
        return f"{name} incremental"
    versions = list_versions(resolve_root(params.get("data_root")), name)
    return f"{name} {version_name((versions[-1] if versions else 0) + 1)}"


@flow(name="build-dataset", log_prints=False, flow_run_name=run_name)
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
    plans = incremental.plan_inputs(inputs, read_manifest(parent) if parent else None,
                                    Path(recipe_path).resolve().parent)
    if parent is not None and all(p["skip"] for p in plans):
        return {"version_dir": str(parent), "published": False}
    work_root = root / "work" / name
    context = BuildContext(work_root, version_dirs, incremental=parent is not None, plans=plans, force=force)
    stages = build_stages(recipe, context)
    for stage in stages:  # checks that stop a build before any work (the annotator gate)
        if (line := stage.preflight()) is not None:
            get_run_logger().info("%s", line)

    results: dict[str, list[StageResult]] = {}
    for stage in stages:
        results[stage.name] = run_stage(stage, results)
        if stage.ends_build_when_empty and sum(r.stats["outputs_written"] for r in results[stage.name]) == 0:
            return {"version_dir": str(parent), "published": False}  # nothing new since the parent

    outcome = publish_task(str(root), recipe, str(recipe_path), B.record_inputs(plans, next(iter(results.values()))),
                           key, results, command, str(parent) if parent else None, str(work_root), force)
    publish_artifacts(Path(outcome["version_dir"]), published=outcome["published"])
    return outcome


def run_tags(dataset: str, incremental: bool):
    """The tags a build's flow run carries in Prefect's UI (a context manager around the call)."""
    return tags("prefpipe", f"dataset:{dataset}", "incremental" if incremental else "build")


def engine_pool_plugin():
    """A Dask worker plugin that closes the worker's resident engines (`pipeline.engines.pool`)
    when the worker stops. Built here and pickled by value, so workers never import this module."""
    from distributed import WorkerPlugin

    class EnginePool(WorkerPlugin):
        name = "prefpipe-engine-pool"
        idempotent = True  # kept on a later build's registration (replacing it would close the engines)

        def teardown(self, worker):
            from pipeline.engines import pool as worker_pool

            worker_pool.close_all()

    return EnginePool()


def build_flow(dask_address: str | None = None):
    """`build_dataset` on the local runner, or with its tasks on an existing Dask cluster (whose
    workers then close their resident engines when they stop)."""
    if not dask_address:
        return build_dataset
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    with Client(dask_address, timeout=60) as client:
        client.register_plugin(engine_pool_plugin())
    return build_dataset.with_options(task_runner=DaskTaskRunner(address=dask_address))
