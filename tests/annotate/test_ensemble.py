"""The ensemble annotator (`annotate.method: ensemble`): features of one density-ratio pass combined
by logistic weights fitted on gold pairs, cross-validated; the weights and the out-of-fold numbers
are in the manifest and the card, the annotate stage scores with them, and the fit runs once."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.annotate import ensemble
from pipeline.publish.store import read_manifest
from tests.helpers import cli, hh_slice

NAMES = ["signal", "noise", "log_chars"]


def synthetic(n: int, seed: int):
    """Pairs whose label follows feature 0 (with noise); feature 1 is noise, the length feature
    is a weaker copy of the signal."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    a[:, 2], b[:, 2] = 0.3 * a[:, 0] + rng.normal(size=n), 0.3 * b[:, 0] + rng.normal(size=n)
    margin = 3.0 * (a[:, 0] - b[:, 0]) + rng.normal(size=n)
    labels = np.where(margin > 0, "a", "b").astype(object)
    labels[rng.random(n) < 0.1] = "tie"
    return a, b, labels.tolist()


def test_the_fit_finds_the_signal_and_scores_out_of_fold():
    a, b, labels = synthetic(300, 0)
    fitted = ensemble.fit(a, b, labels, NAMES, folds=5, seed=0)
    w = fitted["weights"]
    coef = dict(zip(w["features"], w["coefficients"]))
    assert coef["signal"] > 5 * abs(coef["noise"]) and coef["signal"] > 0
    assert w["decisive_pairs"] == sum(x != "tie" for x in labels) and w["pairs"] == 300
    gold = np.asarray(labels)
    oof = np.asarray(fitted["verdicts"]["ensemble"])
    decisive = gold != "tie"
    assert len(oof) == 300 and np.mean(oof[decisive] == gold[decisive]) > 0.85
    assert set(fitted["verdicts"]) == {"ensemble", "length_controlled"}
    assert fitted == ensemble.fit(a, b, labels, NAMES, folds=5, seed=0)  # deterministic


def test_too_few_gold_pairs_is_one_clear_error():
    a, b, labels = synthetic(6, 1)
    with pytest.raises(ValueError, match="gold pairs without a tie; at least 10 are needed for 5-fold"):
        ensemble.fit(a, b, labels, NAMES, folds=5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 80))
def test_swapping_a_and_b_flips_every_verdict(seed, n):
    """No intercept, both orders in the fit: the first position earns nothing, whatever the data."""
    a, b, labels = synthetic(n, seed)
    swapped = [{"a": "b", "b": "a", "tie": "tie"}[x] for x in labels]
    one = ensemble.fit(a, b, labels, NAMES, folds=2, seed=seed)
    other = ensemble.fit(b, a, swapped, NAMES, folds=2, seed=seed)
    assert np.allclose(one["weights"]["coefficients"], other["weights"]["coefficients"], atol=1e-6)
    w = one["weights"]
    for fa, fb in zip(a, b):
        sa, sb = (ensemble.score(w, dict(zip(NAMES, f))) for f in (fa, fb))
        assert np.isclose(sa - sb, -(sb - sa))
        assert np.isclose(sa - sb, float(((fa - fb) / w["scales"]) @ w["coefficients"]))


def ensemble_recipe(tmp_path, real_data, strong, weak, name: str, **extra):
    inputs = hh_slice(real_data, tmp_path / "in.jsonl", 6)
    gold = hh_slice(real_data, tmp_path / "gold.jsonl", 40, start=200)
    recipe = {
        "inputs": [{"path": inputs.name, "format": "hh_rlhf", "license": "MIT"}],
        "generate": {"include_source_responses": True},
        "annotate": {"method": "ensemble", "batch_size": 16,
                     "models": {"strong": {"engine": "transformers", "model": str(strong)},
                                "weak": {"engine": "transformers", "model": str(weak)}},
                     "ensemble": {"gold": [gold.name], "limit": 30, "folds": 3, "resamples": 200, **extra}},
        "pairs": {"rule": "best_vs_worst"},
        "output": {"dataset": name},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_an_ensemble_build_scores_with_the_fitted_weights_recorded_in_the_manifest_and_card(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir):
    recipe = ensemble_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, "ens")
    root = tmp_path / "root"
    built = cli("build", str(recipe), "--data-root", str(root))
    assert "ensemble fitted on" in built.stdout + built.stderr
    version = root / "datasets/ens/v0001"
    manifest = read_manifest(version)
    fit = manifest["annotator_fit"]
    w = fit["weights"]
    assert w["features"] == ["cdr_sum", "cdr_tokens", "strong_tokens", "weak_tokens", "log_chars"]  # the default
    assert len(w["coefficients"]) == 5 and w["folds"] == 3
    assert fit["gold"]["pairs"] == 30 and fit["gold"]["files"] == ["gold.jsonl"]
    ev = manifest["annotator_eval"]
    assert ev["configured_variant"] == "ensemble" and "best trivial baseline" in ev["verdict"]["sentence"]
    assert {"ensemble", "length_controlled", "cdr_sum alone", "log_chars alone"} <= set(ev["variants"])
    assert "/" + str(tmp_path).strip("/") not in json.dumps(manifest)  # no absolute path published

    annotations = pl.read_parquet(sorted((root / "work/ens/annotate").rglob("part-*.parquet")))
    assert set(annotations["method"]) == {"ensemble"} and set(annotations["status"]) == {"ok"}
    for row in annotations.iter_rows(named=True):
        features = json.loads(row["details"])["features"]
        assert row["score"] == pytest.approx(ensemble.score(w, features))
    card = (version / "README.md").read_text()
    assert "The annotator is an ensemble" in card and ev["verdict"]["sentence"] in card

    reports = list((root / "work/ens/ensemble").glob("*.json"))
    again = cli("build", str(recipe), "--data-root", str(root))
    assert list((root / "work/ens/ensemble").glob("*.json")) == reports == reports[:1]  # fitted once
    assert "v0001" in again.stdout + again.stderr


def test_length_controlled_scores_without_the_length_term(tmp_path, real_data, tiny_model_dir,
                                                         tiny_weak_model_dir):
    """Also: a gate on the fit's own gold pairs asks the engines nothing (one score cache)."""
    recipe = ensemble_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, "lc",
                             length_controlled=True)
    data = yaml.safe_load(recipe.read_text())
    data["annotate"]["gate"] = {"gold": "gold.jsonl", "limit": 30, "min_accuracy": 0.0, "resamples": 100}
    recipe.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    cli("build", str(recipe), "--data-root", str(root))
    manifest = read_manifest(root / "datasets/lc/v0001")
    assert manifest["annotator_fit"]["configured_variant"] == "length_controlled"
    gated = manifest["annotator_eval"]
    assert gated["gate"]["passed"] and gated["gold"]["pairs"] == 30
    assert gated["requests"]["engine"] == 0 and gated["requests"]["cached"] == 2 * 2 * 30
    w = dict(manifest["annotator_fit"]["weights"])
    w["coefficients"] = [0.0 if f == "log_chars" else c for f, c in zip(w["features"], w["coefficients"])]
    annotations = pl.read_parquet(sorted((root / "work/lc/annotate").rglob("part-*.parquet")))
    for row in annotations.iter_rows(named=True):
        assert row["score"] == pytest.approx(ensemble.score(w, json.loads(row["details"])["features"]))


@pytest.mark.parametrize("annotate, expected", [
    ({"method": "ensemble"}, "method ensemble needs an ensemble section"),
    ({"method": "density_ratio", "ensemble": {"gold": ["gold.jsonl"]}}, "only it takes one"),
    ({"method": "ensemble", "ensemble": {"gold": ["missing.jsonl"]}}, "annotate.ensemble.gold.0: "),
    ({"method": "ensemble", "ensemble": {"gold": ["gold.jsonl"], "features": ["cdr_sum", "length"]}},
     "annotate.ensemble.features.1"),
    ({"method": "ensemble", "ensemble": {"gold": ["gold.jsonl"], "weights": "gold.jsonl"}},
     "give either gold (files to fit on) or weights (a fit file), not both or neither"),
    ({"method": "ensemble", "ensemble": {"gold": ["gold.jsonl"], "features": ["log_chars"]}},
     "at least one model's score is needed besides log_chars"),
    ({"method": "ensemble", "ensemble": {"gold": ["gold.jsonl"], "features": ["judge", "log_chars"]}},
     "method ensemble needs models.judge for ensemble.features ['judge', 'log_chars']"),
])
def test_a_bad_ensemble_section_fails_before_any_work_naming_the_field(tmp_path, real_data, annotate, expected):
    hh_slice(real_data, tmp_path / "in.jsonl", 4)
    hh_slice(real_data, tmp_path / "gold.jsonl", 4)
    annotate = {"models": {"strong": {"model": "s"}, "weak": {"model": "w"}}, **annotate}
    recipe = {"inputs": [{"path": "in.jsonl", "license": "MIT"}], "generate": {"include_source_responses": True}, "annotate": annotate,
              "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "bad"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    failed = cli("build", str(path), "--data-root", str(tmp_path / "root"), check=False)
    assert failed.returncode == 2 and expected in failed.stderr and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "root" / "work").exists()


def test_a_judge_output_that_does_not_parse_fails_its_candidate_and_is_never_fitted_on(
        tmp_path, autoj_candidate_shard, tiny_model_dir):
    """A random tiny judge writes no rating: every candidate fails with the judge's reason and is in
    the dropped table; a fit over such features names the cause instead of fitting on nothing."""
    from pipeline.annotate import AnnotateConfig, annotate_shard
    from pipeline.engines.hf_engine import TransformersEngine
    from pipeline.shards import list_shards

    engine = TransformersEngine(tiny_model_dir, model_id="tiny-random")
    config = AnnotateConfig(method="ensemble", rationale=False, max_tokens=4, retries=0,
                            models={"judge": {"model": "tiny-random"}},
                            ensemble={"gold": ["unused.jsonl"], "features": ["judge", "log_chars"]})
    weights = {"features": ["judge", "log_chars"], "coefficients": [1.0, 0.5], "scales": [1.0, 1.0]}
    try:
        stats = annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": engine}, stage="annotate",
                               weights=weights)
    finally:
        engine.close()
    rows = pl.read_parquet(list_shards(tmp_path))
    assert stats.rows_in == 12 and stats.rows_dropped == 12 and set(rows["status"]) == {"failed"}
    assert all(e.startswith("unparseable_judge_output") for e in rows["error"]) and rows["score"].null_count() == 12
    dropped = pl.read_parquet(list_shards(tmp_path, "dropped-annotate"))
    assert dropped.height == 12 and set(dropped["reason"]) == {"unparseable_judge_output"}

    a, b, labels = synthetic(40, 3)
    a[:, 0] = np.nan  # no judge rating for any pair
    with pytest.raises(ValueError, match="0 gold pairs without a tie"):
        ensemble.fit(a, b, labels, NAMES, folds=5)
    a[:20, 0] = 1.0  # half the pairs rated: fitted on those, the rest failed
    fitted = ensemble.fit(a, b, labels, NAMES, folds=2, seed=0)
    assert fitted["verdicts"]["ensemble"][20:] == ["failed"] * 20
    assert fitted["weights"]["decisive_pairs"] == sum(x != "tie" for x in labels[:20])


def test_a_fit_file_scores_as_the_fit_it_came_from_without_fitting_again(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir):
    """`python -m pipeline.annotate.ensemble_fit` writes a recipe's fit; a recipe naming it as
    `annotate.ensemble.weights` annotates with exactly those weights and fits nothing; a fit file for
    another annotator fails before any work, naming the field and the setting that differs."""
    import subprocess
    import sys

    from tests.helpers import REPO

    recipe = ensemble_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, "fitted",
                             features=["cdr_tokens", "log_chars"])
    fit_file = tmp_path / "fits" / "tiny.json"
    made = subprocess.run([sys.executable, "-m", "pipeline.annotate.ensemble_fit", str(recipe), "--out", str(fit_file),
                           "--work", str(tmp_path / "fit-work"), "--licence", "hh-rlhf: MIT"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    assert "ensemble fitted on" in made.stdout
    fit = json.loads(fit_file.read_text())
    assert fit["format"] == "prefpipe-ensemble-fit/1" and fit["fitted_on"]["licences"] == ["hh-rlhf: MIT"]
    assert fit["fitted_for"]["features"] == ["cdr_tokens", "log_chars"] and str(tmp_path) not in fit_file.read_text()

    data = yaml.safe_load(recipe.read_text())
    data["annotate"]["ensemble"] = {"weights": "fits/tiny.json", "features": ["cdr_tokens", "log_chars"]}
    recipe.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    built = cli("build", str(recipe), "--data-root", str(root))
    assert "ensemble weights from tiny.json, fitted on" in built.stdout + built.stderr
    assert not (root / "work/fitted/ensemble").exists()  # nothing fitted
    manifest = read_manifest(root / "datasets/fitted/v0001")
    assert manifest["annotator_fit"]["weights"] == fit["weights"] and manifest["annotator_fit"]["fit_file"] == "tiny.json"
    annotations = pl.read_parquet(sorted((root / "work/fitted/annotate").rglob("part-*.parquet")))
    for row in annotations.iter_rows(named=True):
        assert row["score"] == pytest.approx(ensemble.score(fit["weights"], json.loads(row["details"])["features"]))
    card = (root / "datasets/fitted/v0001/README.md").read_text()
    assert "read from the fit file `tiny.json`" in card and "hh-rlhf: MIT" in card

    data["annotate"]["ensemble"]["features"] = ["cdr_sum", "log_chars"]  # not what the file was fitted for
    recipe.write_text(yaml.safe_dump(data))
    failed = cli("build", str(recipe), "--data-root", str(tmp_path / "other"), check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "annotate.ensemble.weights: tiny.json was fitted for features = ['cdr_tokens', 'log_chars']" in line
    assert not any((tmp_path / "other").rglob("part-*.parquet"))


@pytest.mark.parametrize("content, expected", [
    ("not json", "not a readable ensemble fit file"),
    (json.dumps({"format": "prefpipe-ensemble-fit/1", "weights": {"features": ["a"], "coefficients": [],
                                                                  "scales": [1]}}), "weights must have"),
    (json.dumps({"format": "something/1"}), "format must be"),
])
def test_a_malformed_fit_file_fails_the_recipe_naming_the_field(tmp_path, real_data, content, expected):
    hh_slice(real_data, tmp_path / "in.jsonl", 4)
    (tmp_path / "fit.json").write_text(content)
    recipe = {"inputs": [{"path": "in.jsonl", "license": "MIT"}], "generate": {"include_source_responses": True},
              "annotate": {"method": "ensemble", "models": {"strong": {"model": "s"}, "weak": {"model": "w"}},
                           "ensemble": {"weights": "fit.json"}},
              "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "bad"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    failed = cli("build", str(tmp_path / "bad.yaml"), "--data-root", str(tmp_path / "root"), check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "annotate.ensemble.weights: " in failed.stderr and expected in failed.stderr


def test_every_shipped_fit_file_serves_the_recipe_naming_it_and_beats_the_best_trivial_baseline(tmp_path):
    """A shipped recipe that names a fit file (`annotate.ensemble.weights`) builds: the file reads,
    was fitted for exactly that recipe's annotator (read as a build reads it, `ensemble_fit.measure`),
    says what it was fitted on (files by sha256, licences) and beats the best trivial baseline with
    its paired CI above 0."""
    from pipeline.annotate import ensemble_fit
    from pipeline.recipe import load_recipe
    from tests.helpers import REPO

    named = []
    for path in sorted((REPO / "data/recipes").glob("*.yaml")):
        config = load_recipe(path).annotate
        if config is None or config.ensemble is None or config.ensemble.weights is None:
            continue
        named.append(path.name)
        fit = ensemble_fit.measure(config, tmp_path)  # a fit file that does not serve the recipe raises
        assert fit["fitted_on"]["licences"] and all(len(f["sha256"]) == 64 for f in fit["fitted_on"]["files"])
        verdict = fit["verdict"]
        assert verdict["beats_best_trivial_baseline"], (path.name, verdict["sentence"])
        assert verdict["ci95"][0] > 0, (path.name, verdict)
    assert named, "no shipped recipe names a fit file"
