"""A whole build whose generator is an OpenAI-compatible server that fails in every way servers
fail: same published pairs as a fault-free server, the API key nowhere in what the build writes,
and a clear error (not a hang) when the server stays down past the retry budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

from tests.helpers import REPO

SECRET = "sk-prefpipe-test-9f3c1e7a5b2d4c6e8a0b"


def write_recipe(tmp: Path, real_data: Path, tiny_model_dir: Path, url: str, name: str, **http) -> Path:
    lines = (real_data / "prompts/alpaca_eval_text-davinci-003_outputs.json").read_text()
    prompts = [{"prompt": r["instruction"]} for r in json.loads(lines)[:10]]
    src = tmp / "prompts.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    options = {"timeout_s": 1.0, "backoff_s": 0.05, "max_backoff_s": 1.0, **http}
    data = {
        "inputs": [{"path": str(src)}],
        "ingest": {"shard_rows": 5},
        "generate": {"models": [{"name": "served", "model": "tiny", "engine": "http", "base_urls": [url],
                                 "api_key_env": "PREFPIPE_TEST_API_KEY", "k": 3, "max_tokens": 16,
                                 "options": options}]},
        "annotate": {"method": "density_ratio",
                     "models": {"strong": {"engine": "transformers", "model": str(tiny_model_dir)},
                                "weak": {"engine": "transformers", "model": str(tiny_model_dir)}},
                     "criteria": {"default": "Prefer short answers."}},
        "pairs": {"rule": "best_vs_worst"},
        "output": {"dataset": name},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build(recipe: Path, root: Path, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFPIPE_TEST_API_KEY": SECRET, "PREFECT_HOME": str(home),
           "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_LOGGING_TO_API_ENABLED": "true"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(recipe), "--data-root", str(root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def pairs(root: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(root / "datasets" / name / "v0001/data/*.parquet").select(
        "pair_id", "chosen", "rejected", "score_chosen", "score_rejected").sort("pair_id")


def test_faulty_server_same_output_and_no_secret(fault_server_factory, real_data, tiny_model_dir, tmp_path):
    clean = fault_server_factory(api_key=SECRET)
    faulty = fault_server_factory(api_key=SECRET, faults=True, stall_s=2.0)
    ok = build(write_recipe(tmp_path, real_data, tiny_model_dir, clean.url, "clean"), tmp_path / "a",
               tmp_path / "home-a")
    assert ok.returncode == 0, ok.stderr
    bad = build(write_recipe(tmp_path, real_data, tiny_model_dir, faulty.url, "faulty"), tmp_path / "b",
                tmp_path / "home-b")
    assert bad.returncode == 0, bad.stderr
    for kind in ("500", "429", "stall", "drop", "malformed"):
        assert faulty.count(kind) > 0, kind
    assert pairs(tmp_path / "a", "clean").equals(pairs(tmp_path / "b", "faulty"))

    # The key is in no file the builds wrote (data, work dirs, request cache, Prefect database with
    # its logs and artifacts) and in none of their output.
    secret = SECRET.encode()
    for path in [*(tmp_path / "a").rglob("*"), *(tmp_path / "b").rglob("*"),
                 *(tmp_path / "home-a").rglob("*"), *(tmp_path / "home-b").rglob("*")]:
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert SECRET not in ok.stdout + ok.stderr + bad.stdout + bad.stderr


def test_server_down_fails_clearly(fault_server_factory, real_data, tiny_model_dir, tmp_path):
    down = fault_server_factory(api_key=SECRET)
    down.down = True
    recipe = write_recipe(tmp_path, real_data, tiny_model_dir, down.url, "down", max_attempts=3,
                          retry_budget_s=5.0)
    proc = build(recipe, tmp_path / "root", tmp_path / "home", timeout=300)
    assert proc.returncode == 1
    assert "build failed:" in proc.stderr and down.url.split("//")[1] in proc.stderr
    assert not (tmp_path / "root/datasets/down").exists() or not any((tmp_path / "root/datasets/down").glob("v*"))
    assert SECRET not in proc.stderr + proc.stdout
