"""TRL trains on what prefpipe publishes: `DPOTrainer` and `RewardTrainer`, a few steps on tiny
models, over the output of each kind of shipped recipe (one recipe of data/recipes/ per pair rule,
its models swapped for tiny ones, its input cut to a few rows), loaded as the README says and handed
to TRL as it is.

At step 1 both losses are about log 2: DPO's policy equals its reference, and the reward head starts
at zero, so RewardTrainer's first loss is exactly the mean softplus(`margin`). A margin on a sane
logit scale keeps it near log 2; the raw score difference (~100 nats for a summed density ratio)
would not, and a null margin raises.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.engines.tiny import build_tiny_model
from pipeline.recipe import resolve_paths
from tests.helpers import REPO, cli

RECIPES = REPO / "data/recipes"
# One shipped recipe per pair rule: source pairs (with CHES) and scored on-policy pairs. The other
# shipped recipes differ from these only in models and thresholds.
KINDS = {"source": "hh-rlhf-harmless-ches", "best_vs_worst": "demo"}
ROWS = 6


def _head(src: Path, dest: Path, n: int) -> Path:
    """The first n lines of a JSONL input, gzipped or not."""
    with (gzip.open if src.suffix == ".gz" else open)(src, "rb") as f:
        dest.write_bytes(b"".join(itertools.islice(f, n)))
    return dest


def _tiny_models(recipe: dict, strong: Path, weak: Path) -> dict:
    """The recipe with every model a tiny one on the transformers engine, generation short;
    rules, filters and thresholds as shipped."""
    for m in recipe.get("generate", {}).get("models", []):
        m.update(name="tiny", model=str(strong), engine="transformers", max_tokens=16)
    for role, m in recipe.get("annotate", {}).get("models", {}).items():
        m.update(engine="transformers", model=str(weak if role == "weak" else strong))
    if "ches" in recipe.get("filters", {}):
        recipe["filters"]["ches"]["model"] = str(strong)
    recipe, _ = resolve_paths(recipe, RECIPES)  # the gate's gold, the safety head: as shipped (inputs: cut below)
    if gate := recipe.get("annotate", {}).get("gate"):  # measured, as shipped; the threshold is for the
        gate.update(min_accuracy=0.0)  # shipped models
    return recipe


def _fit_for_tiny_models(recipe: dict, tmp: Path) -> dict:
    """A recipe naming a shipped fit file (annotate.ensemble.weights) scores with its weights; they
    were fitted for the shipped models, so with tiny ones the recipe would rightly fail. The same
    weights, declared valid for the tiny models (`ensemble_fit.fitted_for`), keep it building."""
    from pipeline.annotate import ensemble_fit
    from pipeline.annotate.config import AnnotateConfig

    annotate = recipe.get("annotate", {})
    if not (weights := (annotate.get("ensemble") or {}).get("weights")):
        return recipe
    fit = ensemble_fit.read_fit(weights)
    fit["fitted_for"] = ensemble_fit.fitted_for(AnnotateConfig.model_validate(annotate))
    (tmp / "fit.json").write_text(json.dumps(fit))
    annotate["ensemble"]["weights"] = str(tmp / "fit.json")
    return recipe


@pytest.fixture(scope="module")
def weak_model_dir(tmp_path_factory):
    """A second tiny causal LM with other weights: the weak side of a density ratio."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-weak-trl"), seed=3)


def test_every_shipped_pair_rule_is_trained_on():
    rules = {yaml.safe_load(p.read_text()).get("pairs", {}).get("rule", "source")
             for p in RECIPES.glob("*.yaml")}
    assert rules <= set(KINDS), f"add a recipe of rule {rules - set(KINDS)} to KINDS"


@pytest.fixture(scope="module", params=sorted(KINDS.values()))
def version(request, tmp_path_factory, tiny_model_dir, weak_model_dir) -> Path:
    """The published version of one shipped recipe (tiny models, first rows), built by the CLI."""
    tmp = tmp_path_factory.mktemp(request.param)
    shipped = RECIPES / f"{request.param}.yaml"
    recipe = _tiny_models(yaml.safe_load(shipped.read_text()), tiny_model_dir, weak_model_dir)
    recipe = _fit_for_tiny_models(recipe, tmp)
    for n, spec in enumerate(recipe["inputs"]):
        spec["path"] = str(_head(RECIPES / spec["path"], tmp / f"input-{n}.jsonl", ROWS))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli("build", str(path), "--data-root", str(tmp / "data"), timeout=300)
    [v] = sorted((tmp / "data/datasets").glob("*/v*"))
    return v


def _train(trainer_cls, config_cls, model, tokenizer, version: Path, out: Path) -> list[dict]:
    """A few steps of `trainer_cls` on the version's pairs, loaded as the README says; the log."""
    import datasets

    train = datasets.load_dataset("parquet", data_dir=str(version / "data"), split="train",
                                  cache_dir=str(out / "hf-cache"))
    args = config_cls(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, logging_steps=1,
                      learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no",
                      disable_tqdm=True, max_length=512)
    trainer = trainer_cls(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e]


def _assert_trains(log: list[dict]) -> None:
    assert [e["step"] for e in log] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) for e in log), log
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=0.3), log


def test_dpo_trainer_trains_on_the_published_pairs(version, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    log = _train(DPOTrainer, DPOConfig, model, AutoTokenizer.from_pretrained(tiny_model_dir), version,
                 tmp_path)
    _assert_trains(log)


def test_reward_trainer_trains_on_the_published_pairs_and_margins(version, tiny_reward_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir)
    torch.nn.init.zeros_(model.score.weight)  # a fresh head: step 1's loss is mean softplus(margin)
    log = _train(RewardTrainer, RewardConfig, model, AutoTokenizer.from_pretrained(tiny_reward_model_dir),
                 version, tmp_path)
    _assert_trains(log)
