"""notebooks/explore_dataset.ipynb runs top to bottom (nbclient, the venv's python3 kernel) against
a version published by the real `prefpipe build` (Prefect flow, ephemeral API) from real hh-rlhf rows,
with a `datasets` cache that already holds another dataset's v0001."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

from pipeline.publish.store import read_manifest
from tests.fixtures.card_versions import absolute_paths

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_dataset.ipynb"


def test_explore_notebook_executes_against_a_built_version(real_data, card_versions, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "description": "hh-rlhf harmless-base test, first 40 rows",
        "inputs": [{"path": str(real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz"),
                    "format": "hh_rlhf", "license": "MIT", "max_rows": 40}],
        "output": {"dataset": "hh-notebook", "license": "mit"},
    }))
    root = tmp_path / "data"
    build = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(recipe), "--data-root", str(root)],
                           capture_output=True, text=True, env=os.environ, timeout=600)
    assert build.returncode == 0, build.stderr
    version = root / "datasets" / "hh-notebook" / "v0001"
    manifest = read_manifest(version)
    assert manifest["rows"] + manifest["rows_dropped"] == 40
    assert (version / "report.html").is_file()
    readme = (version / "README.md").read_text()
    assert "Every count adds up" in readme
    for text in (readme, (version / "report.html").read_text()):  # the command named absolute paths
        assert str(tmp_path) not in text and absolute_paths(text) == []
    assert "prefpipe build ../recipe.yaml --data-root ." in readme

    # the cache already holds another dataset's v0001 (the clean@v1 fixture): the notebook's own
    # row-count assertion must still hold
    cache = tmp_path / "hf-cache"
    other = card_versions["clean@v1"]
    subprocess.run([sys.executable, "-c", f"import datasets; datasets.load_dataset({str(other)!r}, split='train')"],
                   env={**os.environ, "HF_DATASETS_CACHE": str(cache)}, check=True, capture_output=True, timeout=300)
    assert any(cache.glob("v0001/*"))
    monkeypatch.setenv("PREFPIPE_VERSION_DIR", str(version))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"hh-notebook@v0001: {manifest['rows']} pairs, {manifest['rows_dropped']} dropped" in text
    assert f"num_rows: {manifest['rows']}" in text
    config = yaml.safe_load(readme.split("---\n", 2)[1])["configs"][0]["config_name"]
    assert f"config: {config}" in text and config.startswith("hh-notebook-v0001-")
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # funnel, scores/margin/CHES, lengths
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert json.loads((version / "manifest.json").read_text()) == manifest
