"""Scale-out benchmark (not a test): the same generate + annotate + CHES build on a local Dask
cluster of 1 and of 2 worker processes, in one run; reports t(2 workers) / t(1 worker).

Each worker is `dask worker --nthreads 1` with OMP_NUM_THREADS=1 (one core per worker, as one GPU
per worker on a GPU node), so the ratio measures how the model work spreads over workers. The
model is heavy enough to dominate: the tiny Llama's tokenizer with a wider, deeper random model
(hidden 512, 4 layers) for generation, the strong side of density-ratio annotation and CHES; the
weak side is the tiny model. Input: the shipped hh-rlhf sample (MIT). Both builds must publish the
same pairs. The baseline is the machine itself: the same generation work in plain transformers,
one single-threaded process vs two at once (on a VM whose 2 vCPUs do not give 2 cores' throughput
that ratio, not 0.5, is the best any scale-out can reach).

    .venv/bin/python benchmarks/bench_scaleout.py                # writes benchmarks/results/scaleout-<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flows.server import free_port  # noqa: E402
BIN = Path(sys.executable).parent
SAMPLE = REPO / "data/samples/hh-rlhf_harmless-base_test.jsonl.gz"
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def heavy_model(path: Path, hidden: int, layers: int) -> Path:
    """The tiny model's tokenizer (same as `build_tiny_model` writes) with a bigger random Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from flows.settings import configure

    configure()  # the shared local Prefect server, for the builds and for reading their task runs
    from pipeline.engines.tiny import build_tiny_model

    build_tiny_model(path)
    config = LlamaConfig.from_pretrained(path)
    config.update({"hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
                   "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64, "head_dim": 64,
                   "initializer_range": 0.02})
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).eval().save_pretrained(path)
    return path


def write_recipe(work: Path, conversations: int, heavy: Path, weak: Path, k: int, max_tokens: int) -> Path:
    src = work / "hh.jsonl"
    with gzip.open(SAMPLE, "rt") as f:
        src.write_text("".join(line for _, line in zip(range(conversations), f)))
    recipe = {
        "inputs": [{"path": str(src), "license": "MIT"}],
        "ingest": {"shard_rows": 4},
        "generate": {"models": [{"name": "heavy", "model": str(heavy), "engine": "transformers", "k": k,
                                 "max_tokens": max_tokens, "temperature": 1.0}], "batch_size": 4},
        "annotate": {"method": "density_ratio", "models": {"strong": {"engine": "transformers", "model": str(heavy)},
                                                           "weak": {"engine": "transformers", "model": str(weak)}}},
        "pairs": {"rule": "best_vs_worst"},
        "filters": {"ches": {"model": str(heavy), "top_fraction": 0.1}},
        "output": {"dataset": "scaleout"},
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@contextmanager
def dask_cluster(workers: int, cwd: Path):
    """A scheduler and `workers` single-threaded worker processes on 127.0.0.1."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **WORKER_ENV}
    quiet = dict(env=env, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                "--name", f"w{i}"], **quiet) for i in range(workers)]
    try:
        deadline = time.time() + 180
        while True:
            try:
                with Client(address, timeout=5) as c:
                    if len(c.scheduler_info()["workers"]) == workers:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the dask cluster did not start")
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def build(recipe: Path, root: Path, *extra: str, env: dict | None = None) -> dict:
    """One `prefpipe build` (the real CLI): wall seconds, and each stage's span (first task start to
    last task end) from the flow run's task runs in Prefect."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(recipe), "--data-root", str(root),
                           *extra], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    run = re.search(r"flow-run/([0-9a-f-]{36})", proc.stdout)
    return {"wall_s": round(wall, 1), "stage_span_s": stage_spans(run.group(1)) if run else None}


def stage_spans(flow_run_id: str) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     limit=200)
    spans: dict[str, tuple] = {}
    for r in runs:
        if r.start_time and r.end_time:
            stage = r.name.rsplit("-", 1)[0]
            a, b = spans.get(stage, (r.start_time, r.end_time))
            spans[stage] = (min(a, r.start_time), max(b, r.end_time))
    return {s: round((b - a).total_seconds(), 1) for s, (a, b) in sorted(spans.items(), key=lambda x: x[1][0])}


def tasks_per_worker(address: str) -> dict[str, int]:
    """Model tasks each worker ran (engine uses in its resident pool)."""
    from distributed import Client

    from pipeline.engines import pool

    with Client(address, timeout=10) as c:
        names = {a: w["name"] for a, w in c.scheduler_info()["workers"].items()}
        return {names[a]: sum(e["uses"] for e in s["engines"].values()) for a, s in c.run(pool.stats).items()}


def pairs(root: Path) -> list[dict]:
    import polars as pl

    return pl.read_parquet(root / "datasets/scaleout/v0001/data/*.parquet").sort("pair_id").to_dicts()


RAW = """
import sys, time, torch
from transformers import AutoTokenizer, LlamaForCausalLM
model = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tokenizer("Human: how do I bake bread? Assistant:", return_tensors="pt").input_ids
t0 = time.perf_counter()
with torch.no_grad():
    for _ in range(int(sys.argv[2])):
        model.generate(ids, max_new_tokens=int(sys.argv[3]), min_new_tokens=int(sys.argv[3]), do_sample=True)
print(time.perf_counter() - t0)
"""


def raw_ratio(model: Path, requests: int, tokens: int) -> dict:
    """The machine's own bound, without prefpipe: plain `generate` of `requests` samples in one
    single-threaded process vs half of them in each of two at once (generation time only)."""
    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RAW, str(model), str(n), str(tokens)], text=True,
                                stdout=subprocess.PIPE, env={**os.environ, **WORKER_ENV})

    one = float(start(requests).communicate()[0])
    pair = [start(requests // 2), start(requests - requests // 2)]
    two = max(float(p.communicate()[0]) for p in pair)
    return {"one_process_s": round(one, 1), "two_processes_s": round(two, 1), "ratio": round(two / one, 3)}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="candidates per conversation")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--local", action="store_true", help="also time the local runner (no Dask, torch's own threads)")
    ap.add_argument("--out", type=Path, default=REPO / f"benchmarks/results/scaleout-{datetime.date.today()}.json")
    args = ap.parse_args()

    from flows.settings import configure

    configure()  # the shared local Prefect server, for the builds and for reading their task runs
    from pipeline.engines.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        heavy = heavy_model(work / "heavy", args.hidden, args.layers)
        weak = build_tiny_model(work / "weak", seed=1)
        recipe = write_recipe(work, args.conversations, heavy, weak, args.k, args.max_tokens)
        warm = work / "warm.yaml"  # starts the shared Prefect server before anything is timed
        warm.write_text(yaml.safe_dump({"inputs": [{"path": str(work / "hh.jsonl"), "license": "MIT"}],
                                        "output": {"dataset": "warm"}}))
        build(warm, work / "warm")

        runs, load = {}, {"before": uptime()}
        for n in (1, 2):
            with dask_cluster(n, work) as address:
                runs[f"{n}_worker"] = build(recipe, work / f"w{n}", "--dask-address", address)
                runs[f"{n}_worker"]["model_tasks_per_worker"] = tasks_per_worker(address)
            print(f"{n} worker(s): {runs[f'{n}_worker']}  ({uptime()})", flush=True)
        if args.local:
            runs["local"] = build(recipe, work / "local")
            print(f"local runner: {runs['local']}", flush=True)
        raw = raw_ratio(heavy, args.conversations * args.k, args.max_tokens)
        print(f"plain generate, 1 vs 2 processes: {raw}", flush=True)
        load["after"] = uptime()
        same = pairs(work / "w1") == pairs(work / "w2")
        published = len(pairs(work / "w2"))

    ratio = round(runs["2_worker"]["wall_s"] / runs["1_worker"]["wall_s"], 3)
    result = {
        "date": str(datetime.date.today()), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores", "load": load,
        "build": {"conversations": args.conversations, "shards": -(-args.conversations // 4), "k": args.k,
                  "max_tokens": args.max_tokens, "model": {"hidden": args.hidden, "layers": args.layers},
                  "stages": "ingest, generate, annotate (density ratio), pairs, ches"},
        "workers": "dask worker --nthreads 1, OMP_NUM_THREADS=1", "runs": runs,
        "ratio_2_over_1": ratio, "target": 0.6, "same_pairs": same, "pairs_published": published,
        "machine_bound": raw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"t(2 workers) / t(1 worker) = {ratio} (target <= 0.6; this machine's own bound for the generation: "
          f"{raw['ratio']}); same pairs: {same}; written to {args.out}")


if __name__ == "__main__":
    main()
