"""Orchestration with real Prefect: a served deployment on a real server running on a schedule
with incremental runs, task caching counted from Prefect's task-run states, and a real Dask
cluster giving the same output as the local runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from pipeline.publish.store import list_versions, read_manifest
from tests.helpers import REPO, cli, free_port, hh_slice, write_recipe

BIN = Path(sys.executable).parent



def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1 with its own home and SQLite database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_UI_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 120, "the Prefect server", proc)
        yield {"url": url, "home": home}
    finally:
        stop(proc)
        log.close()


def api(server, method: str, path: str, body: dict | None = None):
    r = httpx.request(method, f"{server['url']}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json() if r.content else None


def pair_ids(version: Path) -> set[str]:
    return set(pl.read_parquet(version / "data" / "*.parquet")["pair_id"])


def test_scheduled_deployment_runs_incrementally(prefect_server, real_data, tmp_path):
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 60)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "scheduled")
    root = tmp_path / "root"
    env = {**os.environ, "PREFECT_API_URL": prefect_server["url"], "PREFECT_HOME": str(tmp_path / "client-home"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = open(tmp_path / "serve.log", "w")
    served = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "deploy", str(recipe), "--interval", "4",
                               "--name", "nightly", "--data-root", str(root)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def completed_runs() -> int:
        runs = api(prefect_server, "POST", "/flow_runs/filter",
                   {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        return len([r for r in runs if r.get("deployment_id")])

    try:
        wait_until(lambda: list_versions(root, "scheduled") == [1], 240, "the first scheduled run", served)
        first = root / "datasets/scheduled/v0001"
        runs_after_first = completed_runs()
        # Later runs with no new input publish nothing.
        wait_until(lambda: completed_runs() >= runs_after_first + 2, 240, "two more scheduled runs", served)
        assert list_versions(root, "scheduled") == [1]

        deployments = cli("deployments", "ls", env={"PREFECT_API_URL": prefect_server["url"]}).stdout
        assert "nightly" in deployments

        # Append real new rows: the next run publishes exactly them on top of v0001.
        new = hh_slice(real_data, tmp_path / "new.jsonl", 25, start=60)
        with open(src, "ab") as f:
            f.write(new.read_bytes())
        wait_until(lambda: list_versions(root, "scheduled") == [1, 2], 240, "the incremental run", served)
    finally:
        stop(served)
        log.close()
    second = root / "datasets/scheduled/v0002"
    manifest = read_manifest(second)
    assert manifest["parent_version"] == "v0001"
    assert manifest["funnel"][0]["rows_in"] == 25  # only the appended rows were read
    added = pair_ids(second) - pair_ids(first)
    assert pair_ids(first) <= pair_ids(second)
    assert len(added) == manifest["incremental"]["rows_added"] == manifest["funnel"][-1]["outputs_written"]

    # The added pairs are exactly those a fresh build of only the new rows yields.
    only_new = write_recipe(tmp_path / "only_new.yaml", [new], "only-new")
    cli("build", str(only_new), "--data-root", str(tmp_path / "root2"))
    assert added == pair_ids(tmp_path / "root2/datasets/only-new/v0001")


def test_pause_and_resume(prefect_server, real_data, tmp_path):
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 10)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "pausable")
    env = {"PREFECT_API_URL": prefect_server["url"], "PREFECT_HOME": str(tmp_path / "client-home")}
    served = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "deploy", str(recipe), "--cron", "0 3 * * *",
                               "--data-root", str(tmp_path / "root")], cwd=REPO, env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: "pausable" in cli("deployments", "ls", env=env).stdout, 120, "the deployment", served)
        cli("deployments", "pause", "pausable", env=env)
        d = api(prefect_server, "GET", "/deployments/name/build-dataset/pausable")
        assert d["paused"] is True
        cli("deployments", "resume", "pausable", env=env)
        d = api(prefect_server, "GET", "/deployments/name/build-dataset/pausable")
        assert d["paused"] is False
        assert d["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    finally:
        stop(served)


def test_repeated_build_runs_no_stage_tasks(real_data, tmp_path):
    """Counted from Prefect's own task-run records (the session's ephemeral API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.build import build_dataset

    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 120)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "cached", ingest={"shard_rows": 50})
    root = str(tmp_path / "root")

    def task_states(state) -> list[str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        return sorted(r.state.name for r in runs if r.name.split("-")[0] in ("ingest", "pairs"))

    first = build_dataset(str(recipe), root, return_state=True)
    assert first.result()["published"] is True
    assert task_states(first) == ["Completed"] * 4  # 1 ingest + 3 pairs shards
    second = build_dataset(str(recipe), root, return_state=True)
    assert second.result()["published"] is False
    assert task_states(second) == []  # nothing executed
    # Forcing a new version reuses every finished stage through Prefect's cache.
    third = build_dataset(str(recipe), root, force=True, return_state=True)
    assert third.result()["published"] is True
    assert task_states(third) == ["Cached"] * 4
    v1, v2 = (Path(root) / "datasets/cached" / v for v in ("v0001", "v0002"))
    assert pair_ids(v1) == pair_ids(v2)
    # With the work directory gone the cache is not trusted: the stages run again.
    shutil.rmtree(Path(root) / "work")
    fourth = build_dataset(str(recipe), root, force=True, return_state=True)
    assert task_states(fourth) == ["Completed"] * 4
    assert pair_ids(Path(root) / "datasets/cached/v0003") == pair_ids(v1)


def test_dask_cluster_gives_the_same_output(real_data, tmp_path):
    port = free_port()
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, cwd=tmp_path)
    address = f"tcp://127.0.0.1:{port}"
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                 "--name", f"w{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=tmp_path) for i in range(2)]
    try:
        from distributed import Client

        def two_workers():
            try:
                with Client(address, timeout=5) as c:
                    return len(c.scheduler_info()["workers"]) == 2
            except OSError:
                return False

        wait_until(two_workers, 120, "two dask workers", scheduler)
        src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 200)
        recipe = write_recipe(tmp_path / "recipe.yaml", [src], "dask", ingest={"shard_rows": 40})
        cli("build", str(recipe), "--data-root", str(tmp_path / "local"))
        cli("build", str(recipe), "--data-root", str(tmp_path / "cluster"), "--dask-address", address)
        with Client(address, timeout=10) as c:
            prefixes = c.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        print("dask task prefixes:", prefixes)
        # the shard tasks ran on the cluster (Dask keys are prefixed with the task function's name)
        assert any("ingest" in p for p in prefixes) and any("pairs" in p for p in prefixes)
    finally:
        for p in [*workers, scheduler]:
            stop(p)
    local = tmp_path / "local/datasets/dask/v0001"
    cluster = tmp_path / "cluster/datasets/dask/v0001"
    a = pl.read_parquet(local / "data/*.parquet").sort("pair_id")
    b = pl.read_parquet(cluster / "data/*.parquet").sort("pair_id")
    assert a.height == b.height > 0 and a.equals(b)
    assert json.dumps(read_manifest(local)["funnel"]) == json.dumps(read_manifest(cluster)["funnel"])
