"""The annotator gate (`annotate.gate`): a build measures its annotator on human-labelled gold pairs
before annotating anything; below `min_accuracy` it stops with the number and its CI (exit 1,
nothing annotated, nothing published) unless `--force`; the measurement is in the manifest and the
card either way, and an unchanged gate is not measured again."""

from __future__ import annotations

import yaml

from pipeline.publish.store import list_versions, read_manifest
from tests.helpers import cli, hh_slice


def gated_recipe(tmp_path, real_data, strong, weak, min_accuracy: float, name: str):
    inputs = hh_slice(real_data, tmp_path / "in.jsonl", 8)
    gold = hh_slice(real_data, tmp_path / "gold.jsonl", 24, start=100)
    recipe = {
        "inputs": [{"path": inputs.name, "format": "hh_rlhf", "license": "MIT"}],
        "generate": {"include_source_responses": True},
        "annotate": {"method": "density_ratio", "batch_size": 16,
                     "models": {"strong": {"engine": "transformers", "model": str(strong)},
                                "weak": {"engine": "transformers", "model": str(weak)}},
                     "gate": {"gold": gold.name, "min_accuracy": min_accuracy, "limit": 20, "resamples": 200}},
        "pairs": {"rule": "best_vs_worst"},
        "output": {"dataset": name},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_gate_the_annotator_misses_stops_the_build_before_annotating(tmp_path, real_data, tiny_model_dir,
                                                                       tiny_weak_model_dir):
    recipe = gated_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, 1.0, "gated")
    root = tmp_path / "root"
    failed = cli("build", str(recipe), "--data-root", str(root), check=False)
    assert failed.returncode == 1, failed.stderr
    line = failed.stderr.strip()
    assert "\n" not in line and line.startswith("error: annotator gate: ") and "of 20 gold pairs of gold.jsonl" in line
    assert "(min_accuracy 1): below the gate" in line and "--force" in line and "Traceback" not in failed.stderr
    assert list_versions(root, "gated") == []
    work = root / "work" / "gated"
    assert not (work / "annotate").exists() and not (work / "generate").exists()  # nothing ran
    reports = list((work / "gate").glob("*.json"))
    assert len(reports) == 1

    forced = cli("build", str(recipe), "--data-root", str(root), "--force")
    assert list((work / "gate").glob("*.json")) == reports  # measured once
    manifest = read_manifest(root / "datasets/gated/v0001")
    ev = manifest["annotator_eval"]
    assert ev["gate"]["passed"] is False and ev["gate"]["forced"] is True and ev["gold"]["pairs"] == 20
    assert ev["gold"]["path"] == "../gold.jsonl"  # relative to the data root, never absolute
    assert "forced with --force" in forced.stderr
    card = (root / "datasets/gated/v0001/README.md").read_text()
    assert "not met; the build was forced past it" in card and ev["verdict"]["sentence"] in card


def test_a_gate_the_annotator_meets_is_recorded_in_the_manifest_and_the_card(tmp_path, real_data, tiny_model_dir,
                                                                             tiny_weak_model_dir):
    recipe = gated_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, 0.0, "passes")
    root = tmp_path / "root"
    built = cli("build", str(recipe), "--data-root", str(root))
    manifest = read_manifest(root / "datasets/passes/v0001")
    ev = manifest["annotator_eval"]
    acc, (lo, hi) = ev["gate"]["accuracy"], ev["gate"]["ci95"]
    assert ev["gate"]["passed"] is True and ev["gate"]["forced"] is False and lo <= acc <= hi
    assert f"agreed with the human labels on {acc:.3f} [{lo:.3f}, {hi:.3f}] of 20 gold pairs" in built.stdout
    card = (root / "datasets/passes/v0001/README.md").read_text()
    assert "annotator gate asks for 0.0%: passed." in card
