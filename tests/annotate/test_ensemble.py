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
    assert w["features"] == list(ensemble.FEATURES) and len(w["coefficients"]) == 5 and w["folds"] == 3
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
