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


def test_a_model_or_head_rewritten_in_place_is_measured_again(tmp_path, real_data):
    """The gate's report and the ensemble's fit are kept by content: a model directory or a safety
    head file rewritten at the same path must not be answered with the old measurement."""
    import shutil

    from pipeline.annotate import ensemble_fit, gate
    from pipeline.annotate.config import AnnotateConfig
    from tests.helpers import REPO

    for name in ("strong", "weak"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"first weights of " + name.encode())
    gold = hh_slice(real_data, tmp_path / "gold.jsonl", 4)
    head = tmp_path / "head.json"
    shutil.copy(REPO / "data/heads/minilm-hh-harmless.json", head)
    models = {r: {"model": str(tmp_path / r)} for r in ("strong", "weak")}
    routed = AnnotateConfig(method="density_ratio", models=models, safety_head={"path": str(head)},
                            gate={"gold": str(gold), "min_accuracy": 0.5})
    mixed = AnnotateConfig(method="ensemble", models=models, ensemble={"gold": [str(gold)]})

    def keys():
        return gate.report_path(routed, None, tmp_path), ensemble_fit.report_path(mixed, tmp_path)

    first = keys()
    assert keys() == first  # nothing changed: the same measurement
    head.write_text(head.read_text().replace('"threshold": 0.5', '"threshold": 0.6'))
    second = keys()
    assert second[0] != first[0] and second[1] == first[1]  # the ensemble takes no head
    (tmp_path / "weak" / "model.safetensors").write_bytes(b"retrained weak weights")
    third = keys()
    assert third[0] != second[0] and third[1] != second[1]
