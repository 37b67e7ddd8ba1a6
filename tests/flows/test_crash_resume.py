"""Crash-resume: a full build (ingest -> dedup -> decontam -> generate -> annotate -> pairs ->
length/margin/CHES -> publish) is SIGKILLed at seeded points in every stage, restarted each time,
and finally completes with output identical to an uninterrupted build, without recomputing any
finished generation request."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.cache import CACHE_FILE, count_results, recomputed
from pipeline.publish.store import list_versions
from tests.helpers import REPO, cli

STAGES = ["ingest", "dedup", "decontam", "generate", "generate", "annotate", "pairs", "length", "margin",
          "ches", "publish"]


def recipe(tmp: Path, real_data: Path, tiny_model_dir: Path) -> Path:
    lines = (real_data / "prompts/self-instruct_user_oriented_instructions.jsonl").read_text().splitlines()
    src = tmp / "prompts.jsonl"
    src.write_text("\n".join(lines[20:36]) + "\n")
    data = {
        "inputs": [{"path": str(src), "license": "Apache-2.0"}],
        "ingest": {"shard_rows": 4},
        "dedup": {},
        "decontam": {},
        "generate": {"models": [{"name": "tiny", "model": str(tiny_model_dir), "engine": "transformers",
                                 "k": 3, "max_tokens": 16, "temperature": 1.0}],
                     "batch_size": 2},
        "annotate": {"method": "density_ratio", "length_norm": "tokens",
                     "criteria": {"default": "Answer helpfully and concisely."},
                     "models": {"strong": {"engine": "transformers", "model": str(tiny_model_dir)},
                                "weak": {"engine": "transformers", "model": str(tiny_model_dir)}}},
        "pairs": {"rule": "best_vs_worst"},
        "filters": {"length": {}, "margin": {"min_margin": 0.0},
                    "ches": {"model": str(tiny_model_dir), "top_fraction": 0.25}},
        "output": {"dataset": "crashy"},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def in_progress(root: Path) -> set[str]:
    """Stages with a temporary output directory right now (work in flight)."""
    stages = set()
    work = root / "work" / "crashy"
    if work.is_dir():
        for stage_dir in work.iterdir():
            if stage_dir.is_dir() and any(p.name.startswith(".tmp-") for p in stage_dir.iterdir()):
                stages.add(stage_dir.name)
    ds = root / "datasets" / "crashy"
    if ds.is_dir() and any(p.name.startswith(".tmp-") for p in ds.iterdir()):
        stages.add("publish")
    return stages


def killed_during(recipe_path: Path, root: Path, target: str, rng: random.Random) -> str | None:
    """Start a build, SIGKILL it once `target` (or a later stage) is in flight; the stage hit,
    or None if the build finished first."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", str(recipe_path), "--data-root",
                             str(root)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    order = list(dict.fromkeys(STAGES))
    later = set(order[order.index(target):])
    try:
        while proc.poll() is None:
            hit = in_progress(root) & later
            if hit:
                time.sleep(rng.uniform(0, 0.2))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return sorted(hit, key=order.index)[0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    return None


def outcome(root: Path) -> pl.DataFrame:
    version = root / "datasets/crashy/v0001"
    return pl.read_parquet(version / "data/*.parquet").select(
        "pair_id", "score_chosen", "score_rejected", "margin", "metadata").sort("pair_id")


@pytest.mark.timeout(1800)
def test_killed_at_every_stage_then_identical(real_data, tiny_model_dir, tmp_path):
    path = recipe(tmp_path, real_data, tiny_model_dir)
    reference = tmp_path / "reference"
    cli("build", str(path), "--data-root", str(reference), timeout=900)
    total_requests = count_results(reference / "work/crashy/cache" / CACHE_FILE)
    assert total_requests == 16 * 3

    root = tmp_path / "crashed"
    rng = random.Random(1234)
    landed = []
    for target in STAGES:
        hit = killed_during(path, root, target, rng)
        if hit is not None:
            landed.append(hit)
        assert list_versions(root, "crashy") == ([] if hit else [1])
        if hit is None:
            break
    print("kills landed in:", landed)
    assert len(landed) >= 10
    assert len(set(landed)) >= 7  # spread over the stages, not only the slow ones

    cli("build", str(path), "--data-root", str(root), timeout=900)
    assert list_versions(root, "crashy") == [1]
    assert outcome(root).equals(outcome(reference))
    cache = root / "work/crashy/cache" / CACHE_FILE
    assert count_results(cache) == total_requests
    assert recomputed(cache) == 0  # no finished request was generated twice
    leftovers = [p for p in (root / "datasets/crashy").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert json.loads((root / "datasets/crashy/v0001/manifest.json").read_text())["rows"] == outcome(root).height
