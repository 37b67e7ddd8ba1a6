"""Model stages scale out: a generate + annotate + CHES build on a real local Dask cluster (scheduler
and 2 worker processes, tiny transformers engines) gives the local run's output, its model tasks
run on both workers, and each worker loads each engine once however many shards it runs, keeps it
for the next build (a rerun shard reuses its finished requests) and closes it when it stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from pipeline.cache import CACHE_FILE, count_results, recomputed
from pipeline.engines import pool
from pipeline.engines.registry import spec_key
from pipeline.publish.store import read_manifest
from tests.helpers import cli, free_port, hh_slice, write_recipe

BIN = Path(sys.executable).parent
ENV = {"OMP_NUM_THREADS": "1"}  # the same for the local run and the workers (2 cores for 2 workers)


@contextmanager
def dask_cluster(workers: int, cwd: Path):
    """`dask scheduler` + `workers` x `dask worker --nthreads 1` on 127.0.0.1; yields the address."""
    from distributed import Client

    port = free_port()
    env = {**os.environ, **ENV}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=cwd, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"tcp://127.0.0.1:{port}"
    procs += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                "--name", f"w{i}"], env=env, cwd=cwd, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
    try:
        deadline = time.time() + 120
        while True:
            try:
                with Client(address, timeout=5) as c:
                    if len(c.scheduler_info()["workers"]) == workers:
                        break
            except OSError:
                pass
            assert time.time() < deadline and procs[0].poll() is None, "the dask cluster did not start"
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def worker_pools(address: str) -> dict[str, dict]:
    """Each worker's engine pool (`pool.stats`), by worker name."""
    from distributed import Client

    with Client(address, timeout=10) as c:
        names = {addr: w["name"] for addr, w in c.scheduler_info()["workers"].items()}
        return {names[addr]: stats for addr, stats in c.run(pool.stats).items()}


def published(root: Path) -> Path:
    return root / "datasets" / "scale" / "v0001"


@pytest.fixture
def recipe(real_data, tiny_model_dir, tiny_weak_model_dir, tmp_path) -> tuple[Path, dict[str, str]]:
    """24 real hh-rlhf conversations in 6 shards; four distinct engines (generator, strong, weak,
    CHES: same tiny model with other options is another engine)."""
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 24)
    tiny, weak = str(tiny_model_dir), str(tiny_weak_model_dir)
    path = write_recipe(
        tmp_path / "recipe.yaml", [src], "scale", ingest={"shard_rows": 4},
        generate={"models": [{"name": "tiny", "model": tiny, "engine": "transformers", "k": 2, "max_tokens": 8,
                              "temperature": 1.0, "options": {"batch_size": 4}}],
                  "include_source_responses": True, "batch_size": 4},
        annotate={"method": "density_ratio", "models": {"strong": {"engine": "transformers", "model": tiny},
                                                        "weak": {"engine": "transformers", "model": weak}}},
        pairs={"rule": "best_vs_worst"},
        filters={"ches": {"model": tiny, "top_fraction": 0.3}})
    engines = {"generator": spec_key((tiny, "transformers", {"batch_size": 4})),
               "strong": spec_key((tiny, "transformers", {})), "weak": spec_key((weak, "transformers", {})),
               "ches": spec_key((tiny, "transformers", {"dtype": "float32", "batch_size": 8}))}
    return path, engines


def test_model_stages_spread_over_workers_with_one_engine_load_each(recipe, tmp_path):
    from distributed import Client

    from flows.build import engine_pool_plugin

    path, engines = recipe
    cli("build", str(path), "--data-root", str(tmp_path / "local"), env=ENV)
    cluster_root = tmp_path / "cluster"
    work = cluster_root / "work" / "scale"
    with dask_cluster(2, tmp_path) as address:
        cli("build", str(path), "--data-root", str(cluster_root), "--dask-address", address, env=ENV)
        first = worker_pools(address)
        # A killed shard's rerun (its output gone): elsewhere on the cluster, from the request cache,
        # on the engines the workers kept from the first build.
        cached = count_results(work / "cache" / CACHE_FILE)
        shutil.rmtree(sorted((work / "generate").iterdir())[0])
        cli("build", str(path), "--data-root", str(cluster_root), "--dask-address", address, "--force", env=ENV)
        second = worker_pools(address)
        with Client(address, timeout=10) as c:  # what a stopping worker runs: the plugin's teardown
            c.unregister_worker_plugin(engine_pool_plugin().name)
        closed = worker_pools(address)
    print("worker pools:", json.dumps(first, indent=1))

    # Output: the local run's pairs, rows and funnel.
    local, cluster = published(tmp_path / "local"), published(cluster_root)
    a = pl.read_parquet(local / "data/*.parquet").sort("pair_id")
    b = pl.read_parquet(cluster / "data/*.parquet").sort("pair_id")
    assert a.height == b.height > 0 and a["pair_id"].to_list() == b["pair_id"].to_list() and a.equals(b)
    assert read_manifest(local)["funnel"] == read_manifest(cluster)["funnel"]
    assert [s["stage"] for s in read_manifest(cluster)["funnel"]] == ["ingest", "generate", "annotate", "pairs",
                                                                      "ches"]

    # Every model task ran on some worker (uses), each worker ran some of each stage's, and loaded
    # each engine once: 6 shards per stage, 2 loads per engine in all.
    assert sorted(first) == ["w0", "w1"]
    shards = {"generator": 6, "strong": 6, "weak": 6, "ches": len(list((work / "ches_scoring").iterdir()))}
    for role, key in engines.items():
        uses = [first[w]["engines"][key]["uses"] for w in first]
        assert all(u >= 1 for u in uses), f"{role}: model tasks per worker {uses}"
        assert sum(uses) == shards[role], f"{role}: {sum(uses)} tasks for {shards[role]} shards"
        assert [first[w]["engines"][key]["loads"] for w in first] == [1, 1], role
        assert all(first[w]["engines"][key]["resident"] for w in first)  # kept for later builds
    assert {w: set(first[w]["engines"]) for w in first} == {w: set(engines.values()) for w in first}

    # The rerun: one generate task, no engine loaded again, no finished request recomputed.
    gen = engines["generator"]
    assert sum(second[w]["engines"][gen]["uses"] - first[w]["engines"][gen]["uses"] for w in first) == 1
    assert all(s["engines"][key]["loads"] == 1 for s in second.values() for key in engines.values())
    assert count_results(work / "cache" / CACHE_FILE) == cached and recomputed(work / "cache" / CACHE_FILE) == 0
    again = pl.read_parquet(cluster_root / "datasets/scale/v0002/data/*.parquet").sort("pair_id")
    assert again.equals(b)

    # The worker plugin the build registered closes each worker's engines when it stops.
    assert [e["resident"] for s in closed.values() for e in s["engines"].values()] == [False] * 8


def test_local_run_closes_each_stage_engines(recipe, tmp_path, monkeypatch):
    """In one process (the local runner) the model tasks share the pool, and each model stage's
    engines are closed before the next stage's load: one stage's engines at a time."""
    from pipeline.engines.hf_engine import TransformersEngine

    path, engines = recipe
    live: list[TransformersEngine] = []
    peak = []
    real_init, real_close = TransformersEngine.__init__, TransformersEngine.close

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        live.append(self)
        peak.append(len(live))

    def close(self):
        live.remove(self)
        real_close(self)

    monkeypatch.setattr(TransformersEngine, "__init__", init)
    monkeypatch.setattr(TransformersEngine, "close", close)
    from flows.build import build_dataset

    before = pool.stats()["engines"]
    out = build_dataset(str(path), str(tmp_path / "root"))
    assert out["published"] and live == [] and pool.stats()["engines"].keys() >= set(engines.values())
    loads = {key: pool.stats()["engines"][key]["loads"] - before.get(key, {}).get("loads", 0)
             for key in engines.values()}
    assert loads == {key: 1 for key in engines.values()}  # once per stage run, not per shard task
    assert max(peak) == 2  # annotate's strong + weak; never another stage's alongside
