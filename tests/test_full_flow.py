"""The whole flow on real prompts with real engines: ingest -> dedup -> decontam -> generate (vLLM
CPU engine, tiny model) -> annotate (density ratio of two tiny models) -> pairs -> length, margin
and CHES filters -> publish, through `prefpipe build` (Prefect, ephemeral API)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl
import pytest
import yaml

from pipeline.engines.tiny import build_tiny_model
from pipeline.publish.store import read_manifest
from tests.helpers import cli


@pytest.fixture(scope="module")
def weak_model_dir(tmp_path_factory, tiny_model_dir):
    """A second tiny model with the same tokenizer corpus but other weights (the 'weak' model)."""
    from tests.fixtures.models import _prompt_texts
    from tests.conftest import REAL

    return build_tiny_model(tmp_path_factory.mktemp("tiny-weak"), _prompt_texts(REAL), seed=7)


@pytest.fixture(scope="module")
def full_build(tmp_path_factory, real_data, tiny_model_dir, weak_model_dir):
    tmp = tmp_path_factory.mktemp("full")
    prompts = [json.loads(line) for line in
               (real_data / "prompts/self-instruct_user_oriented_instructions.jsonl").read_text().splitlines()[:12]]
    gsm8k = json.loads((real_data / "benchmarks/gsm8k_test.jsonl").read_text().splitlines()[3])
    rows = prompts + [prompts[0]]  # an exact duplicate
    rows.append({"instruction": "Please solve this problem.", "input": gsm8k["question"]})  # contaminated
    src = tmp / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine_opts = {"dtype": "float32", "max_model_len": 1024}
    recipe = {
        "inputs": [{"path": str(src), "license": "Apache-2.0"}],
        "ingest": {"shard_rows": 5},
        "dedup": {},
        "decontam": {},
        "generate": {"models": [{"name": "tiny", "model": str(tiny_model_dir), "engine": "vllm", "k": 3,
                                 "max_tokens": 24, "temperature": 1.0, "options": engine_opts}],
                     "include_source_responses": True},
        "annotate": {"method": "density_ratio",
                     "models": {"strong": {"engine": "transformers", "model": str(tiny_model_dir)},
                                "weak": {"engine": "transformers", "model": str(weak_model_dir)}}},
        "pairs": {"rule": "best_vs_worst"},
        "filters": {"length": {"max_ratio": 50}, "margin": {"min_margin": 0.0},
                    "ches": {"model": str(tiny_model_dir), "top_fraction": 0.2}},
        "output": {"dataset": "full"},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = tmp / "root"
    proc = cli("build", str(path), "--data-root", str(root), env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
               timeout=1200)
    return {"root": root, "version": root / "datasets/full/v0001", "proc": proc, "recipe": path,
            "gsm8k": gsm8k}


def test_funnel_accounts_for_every_row(full_build):
    m = read_manifest(full_build["version"])
    stages = [s["stage"] for s in m["funnel"]]
    assert stages == ["ingest", "dedup", "decontam", "generate", "annotate", "pairs", "length", "margin", "ches"]
    for s in m["funnel"]:
        assert s["rows_in"] == s["rows_out"] + s["rows_dropped"]
        assert sum(s["reasons"].values()) == s["rows_dropped"]
    by = {s["stage"]: s for s in m["funnel"]}
    assert by["ingest"]["rows_in"] == 14
    assert by["dedup"]["reasons"] == {"exact_duplicate": 1}
    assert by["decontam"]["reasons"] == {"contaminated_ngram": 1}
    assert by["generate"]["rows_in"] == 12
    assert by["generate"]["outputs_written"] == 12 * 4  # 3 generated + the source reference each
    assert by["pairs"]["rows_in"] == 12
    assert m["rows"] == by["ches"]["outputs_written"]
    dropped = pl.read_parquet(full_build["version"] / "dropped/*.parquet")
    assert dropped.height == m["rows_dropped"]


def test_contaminated_and_duplicate_prompts_never_reach_the_version(full_build):
    pairs = pl.read_parquet(full_build["version"] / "data/*.parquet")
    prompts = [p[-1]["content"] for p in pairs["prompt"]]
    assert not any(full_build["gsm8k"]["question"] in p for p in prompts)
    assert len(set(pairs["conversation_id"])) == pairs.height  # best_vs_worst: one pair per prompt
    m = read_manifest(full_build["version"])
    assert m["decontamination"]["benchmarks"]["gsm8k"]["items_hit"] == 1
    assert m["dedup"]["exact"] == 1


def test_pairs_carry_scores_provenance_and_ches(full_build, weak_model_dir):
    version = full_build["version"]
    ds = datasets.load_dataset("parquet", data_dir=str(version / "data"), split="train")
    m = read_manifest(version)
    assert ds.num_rows == m["rows"] > 0
    for row in ds:
        assert row["score_chosen"] > row["score_rejected"]
        assert row["score_margin"] == pytest.approx(row["score_chosen"] - row["score_rejected"])
        assert 0 <= row["margin"] < 1  # TRL's margin: a preference strength on the logit scale
        assert row["source"] and row["source_row"] is not None
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["pair_rule"] == "best_vs_worst"
        meta = json.loads(row["metadata"])
        assert "ches" in meta and "ches_normalized" in meta
    candidates = pl.read_parquet(version / "candidates/*.parquet")
    assert candidates.height == 12 * 4
    assert set(candidates["origin"]) == {"on_policy", "off_policy"}
    from pipeline.engines.identity import model_identity

    # a local model dir: known by name and files in the models table and the annotator column, and
    # where it lay only in the recipe, relative (no absolute path in a version)
    weak = m["models"]["density_ratio"]["weak"]
    assert weak == model_identity(weak_model_dir) == f"{Path(weak_model_dir).name}@{weak.split('@')[1]}"
    assert all(weak in a for a in candidates["annotator"].unique())
    assert not Path(m["recipe"]["annotate"]["models"]["weak"]["model"]).is_absolute()
    assert m["models"]["generators"][0]["engine"] == "vllm"
    assert m["ches"]["fraction"] == 0.2


def test_identical_rebuild_publishes_nothing(full_build):
    again = cli("build", str(full_build["recipe"]), "--data-root", str(full_build["root"]))
    assert "unchanged" in again.stdout
