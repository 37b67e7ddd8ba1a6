"""Small helpers shared by tests: slices of real data, recipes, running the real CLI."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import yaml

from flows.server import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
HH = "preference/hh-rlhf_harmless-base_test.jsonl.gz"


def hh_slice(real_data: Path, dest: Path, n: int, start: int = 0) -> Path:
    """The first n rows (after `start`) of the real hh-rlhf harmless test file, as JSONL."""
    with gzip.open(real_data / HH, "rb") as f:
        lines = [line for i, line in enumerate(f) if start <= i < start + n]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"".join(lines))
    return dest


def write_recipe(path: Path, inputs: list[Path], dataset: str, **sections) -> Path:
    recipe = {"inputs": [{"path": str(p), "license": "MIT"} for p in inputs],
              "output": {"dataset": dataset}, **sections}
    path.write_text(yaml.safe_dump(recipe))
    return path




def cli(*args: str, env: dict | None = None, timeout: int = 600, check: bool = True,
        **popen) -> subprocess.CompletedProcess:
    """Run the real `prefpipe` CLI in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **{"cwd": REPO, **popen})
    if check and proc.returncode != 0:
        raise AssertionError(f"prefpipe {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
