"""What a user sees of a build in Prefect's UI, read back from a real Prefect server's API: the run
named after the dataset and version, tagged, its stages logged with their counts, the funnel
artifact in funnel order; the terminal stays quiet apart from the run's URL and the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.helpers import REPO, hh_slice, write_recipe


def test_build_run_is_named_tagged_and_logged_in_prefect(real_data, tmp_path):
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_LOGGING_LEVEL", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(home)  # a fresh shared local server: the CLI's defaults, nothing else
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 30)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "logged", filters={"length": {"max_ratio": 3.0}})
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(recipe), "--data-root",
                           str(tmp_path / "root")], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr  # no Prefect chatter on the terminal
    urls = [line for line in proc.stdout.splitlines() if line.startswith("run: http://127.0.0.1:")]
    assert len(urls) == 1, proc.stdout
    run_id = urls[0].rsplit("/", 1)[1]

    api = json.loads((home / "prefpipe-server" / "state.json").read_text())["url"]
    with httpx.Client(base_url=api, timeout=30) as client:
        run = client.get(f"/flow_runs/{run_id}").json()
        assert run["name"] == "logged v0001"
        assert {"prefpipe", "dataset:logged", "build"} <= set(run["tags"])
        logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                 "limit": 200}).json()
        messages = [entry["message"] for entry in logs]
        for stage in ("ingest", "pairs", "length"):
            assert any(m.startswith(f"{stage}: read ") for m in messages), (stage, messages)
        assert any(m.startswith("ingest: read 30 input rows") for m in messages)
        artifacts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    funnel = next(a for a in artifacts if a["key"] == "logged-funnel")
    table = json.loads(funnel["data"]) if isinstance(funnel["data"], str) else funnel["data"]
    assert list(table)[:3] == ["stage", "unit_in", "rows_in"]
    assert table["stage"] == ["ingest", "pairs", "length"]
