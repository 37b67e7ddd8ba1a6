"""A build's cached results are valid only in its own data root and only while their files are intact
(issue 14.1: a rebuild in root B published root A's work files)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.publish.store import read_manifest
from tests.helpers import hh_slice, write_recipe


def build(recipe: Path, root: Path) -> Path:
    from flows.build import build_dataset

    return Path(build_dataset(str(recipe), str(root), force=True)["version_dir"])


def pairs(version: Path) -> pl.DataFrame:
    return pl.read_parquet(version / "data/*.parquet").sort("pair_id")


def test_two_roots_never_share_files_and_damaged_results_rerun(real_data, tmp_path):
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 60)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "iso", ingest={"shard_rows": 20},
                          filters={"length": {"max_ratio": 3.0}})
    a, b = tmp_path / "A", tmp_path / "B"
    first = pairs(build(recipe, a))
    assert pairs(build(recipe, b)).equals(first)

    # Damage root A's work: one stage shard deleted, one corrupted.
    shards = sorted((a / "work").rglob("part-*.parquet"))
    assert len(shards) >= 2
    shards[0].unlink()
    shards[-1].write_bytes(b"not parquet")

    # Root B rebuilds from its own files only.
    version_b = build(recipe, b)
    assert pairs(version_b).equals(first)
    assert str(a) not in (version_b / "manifest.json").read_text()

    # Root A notices the damage and reruns the damaged stages instead of trusting its cache.
    version_a = build(recipe, a)
    assert pairs(version_a).equals(first)
    assert read_manifest(version_a)["rows"] == first.height
    assert shards[0].exists() and pl.read_parquet(shards[-1]).height > 0
