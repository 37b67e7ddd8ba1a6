"""eval-annotator: gold loading from the real preference files, and accuracy / kappa against
hand counts over the raw files."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from pipeline.annotate import AnnotateConfig
from pipeline.annotate.eval import evaluate_annotator, metrics, to_markdown, write_report
from pipeline.annotate.gold import load_gold

AUTOJ = "preference/autoj_testdata_pairwise.jsonl.gz"
HH = "preference/hh-rlhf_harmless-base_test.jsonl.gz"
AUTOJ_LABEL = {0: "a", 1: "b", 2: "tie"}


def raw_rows(path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_autoj_gold_keeps_the_files_order_and_labels(real_data):
    raw = raw_rows(real_data / AUTOJ)
    pairs, rejected = load_gold(real_data / AUTOJ)
    assert len(pairs) + len(rejected) == len(raw)
    assert dict(Counter(r for _, r in rejected)) == {"identical_responses": 9, "empty_content": 1}
    for p in pairs:
        row = raw[p.source_row]
        assert (p.response_a, p.response_b, p.label) == (row["response 1"], row["response 2"],
                                                         AUTOJ_LABEL[row["label"]])
        assert p.prompt == [{"role": "user", "content": row["prompt"]}]


def test_chosen_rejected_gold_is_shown_in_a_seeded_random_order(real_data):
    pairs, _ = load_gold(real_data / HH, limit=200, seed=3)
    again, _ = load_gold(real_data / HH, limit=200, seed=3)
    assert pairs == again
    labels = Counter(p.label for p in pairs)
    assert set(labels) == {"a", "b"} and min(labels.values()) > 60  # not always chosen-first
    raw = raw_rows(real_data / HH)
    for p in pairs[:50]:
        chosen = raw[p.source_row]["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
        assert (p.response_a if p.label == "a" else p.response_b) == chosen


@pytest.fixture(scope="module")
def position_one_engine(position_one_judge_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(position_one_judge_dir, model_id="position-one-judge")
    yield engine
    engine.close()


def test_eval_of_a_position_one_judge_gives_the_hand_counted_accuracy(real_data, position_one_engine,
                                                                     tmp_path):
    pairs, _ = load_gold(real_data / AUTOJ, limit=12, seed=18)
    raw = raw_rows(real_data / AUTOJ)
    gold = [AUTOJ_LABEL[raw[p.source_row]["label"]] for p in pairs]  # hand count from the raw file
    n, first, ties = len(gold), gold.count("a"), gold.count("tie")
    assert 0 < first < n - ties and ties > 0

    config = AnnotateConfig(method="judge_pairwise", models={"judge": {"model": "j"}},
                            max_tokens=1, rationale=False)
    report = evaluate_annotator(config, {"judge": position_one_engine}, pairs, resamples=200)
    single, both, expect = (report["variants"][k] for k in ("single_order", "both_orders", "expectation"))
    # single order: always "a" -> right exactly on the pairs whose gold is "a"
    assert single["accuracy_excluding_ties"] == pytest.approx(first / (n - ties))
    assert single["accuracy_including_ties"] == pytest.approx(first / n)
    assert single["first_position_win_rate"] == 1.0
    assert single["cohen_kappa"] == pytest.approx(0.0)  # a constant annotator agrees only by chance
    # both orders: every verdict flips -> all ties
    assert both["flip_rate"] == 1.0 and both["predicted"] == {"tie": n}
    assert both["accuracy_excluding_ties"] == 0.0
    assert both["accuracy_including_ties"] == pytest.approx(ties / n)
    assert expect["predicted"] == {"tie": n}
    lo, hi = single["ci95"]["accuracy_excluding_ties"]
    assert lo <= single["accuracy_excluding_ties"] <= hi

    report["gold"] = {"path": AUTOJ, "pairs": n, "seed": 18, "rejected": {}}
    js, md = write_report(report, tmp_path)
    assert json.loads(js.read_text())["variants"]["both_orders"]["flip_rate"] == 1.0
    assert "| single_order |" in md.read_text() and "| both_orders |" in md.read_text()


def test_density_ratio_eval_matches_hand_computed_verdicts(real_data, tiny_model_dir, tiny_weak_model_dir):
    from pipeline.engines.hf_engine import TransformersEngine
    from tests.annotate.test_annotate_cdr import hand_logprob

    pairs, _ = load_gold(real_data / AUTOJ, limit=4, seed=19)
    config = AnnotateConfig(method="density_ratio", models={"strong": {"model": "s"}, "weak": {"model": "w"}})
    engines = {"strong": TransformersEngine(tiny_model_dir, dtype="float32"),
               "weak": TransformersEngine(tiny_weak_model_dir, dtype="float32")}
    report = evaluate_annotator(config, engines, pairs, resamples=100)
    m = report["variants"]["density_ratio"]

    def reward(p, response):
        return (hand_logprob(tiny_model_dir, p.prompt, response)
                - hand_logprob(tiny_weak_model_dir, p.prompt, response))

    hand = ["a" if reward(p, p.response_a) > reward(p, p.response_b) else "b" for p in pairs]
    correct = sum(h == p.label for h, p in zip(hand, pairs))
    assert m["accuracy_including_ties"] == pytest.approx(correct / len(pairs))
    assert m["predicted"] == dict(Counter(hand))
    # the same run reports the other length normalisations, from the same log-probs
    per_char = ["a" if reward(p, p.response_a) / len(p.response_a) > reward(p, p.response_b) / len(p.response_b)
                else "b" for p in pairs]
    assert report["variants"]["density_ratio[length_norm=chars]"]["predicted"] == dict(Counter(per_char))
    assert "density_ratio[length_norm=tokens]" in report["variants"]


def test_metrics_against_hand_formulas():
    gold = ["a", "a", "b", "b", "tie", "a", "b", "a"]
    pred = ["a", "b", "b", "b", "tie", "tie", "failed", "a"]
    m = metrics(gold, pred, [10, 5, 5, 9, 3, 3, 8, 1], [1, 9, 6, 2, 3, 3, 2, 4], resamples=300, seed=1)
    assert m["accuracy_including_ties"] == pytest.approx(5 / 8)
    assert m["accuracy_excluding_ties"] == pytest.approx(4 / 7)
    assert m["decisive_accuracy"] == pytest.approx(4 / 5)
    assert m["failed"] == 1
    # Cohen's kappa by hand: p_o = 5/8; p_e = sum_k p_gold(k) p_pred(k)
    p_gold = {"a": 4 / 8, "b": 3 / 8, "tie": 1 / 8}
    p_pred = {"a": 2 / 8, "b": 3 / 8, "tie": 2 / 8}
    p_e = sum(p_gold[k] * p_pred[k] for k in p_gold)
    assert m["cohen_kappa"] == pytest.approx((5 / 8 - p_e) / (1 - p_e))
    from sklearn.metrics import cohen_kappa_score

    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(gold, pred))
    # longer response wins: predicted decisive unequal-length pairs 0,1,2,3,7 -> longer won 0,1,3
    assert m["longer_response_win_rate"] == pytest.approx(3 / 5)
    lo, hi = m["ci95"]["accuracy_including_ties"]
    assert 0 <= lo <= 5 / 8 <= hi <= 1
    assert "| x |" in to_markdown({"annotator": "t", "gold_labels": {}, "variants": {"x": {**m, "seconds": 1}}})


def test_cli_eval_annotator_writes_json_and_markdown(tmp_path, real_data, position_one_judge_dir):
    from typer.testing import CliRunner

    from pipeline.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "annotate:\n  method: judge_pairwise\n  rationale: false\n  max_tokens: 1\n"
        f"  models:\n    judge: {{engine: transformers, model: '{position_one_judge_dir}'}}\n")
    result = CliRunner().invoke(app, ["eval-annotator", str(recipe), "--gold", str(real_data / AUTOJ),
                                      "--limit", "4", "--seed", "18", "--bootstrap", "50",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "eval-annotator.json").read_text())
    assert report["gold"]["pairs"] == 4 and report["variants"]["both_orders"]["flip_rate"] == 1.0
    assert (tmp_path / "report" / "eval-annotator.md").read_text().startswith("# eval-annotator")


def test_cli_eval_annotator_names_the_bad_recipe_field(tmp_path, real_data):
    from typer.testing import CliRunner

    from pipeline.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("annotate:\n  method: judge_pairwise\n  ratng_max: 4\n"
                      "  models: {judge: {model: x}}\n")
    result = CliRunner().invoke(app, ["eval-annotator", str(recipe), "--gold", str(real_data / AUTOJ)])
    assert result.exit_code == 2
    assert "annotate.ratng_max: unknown key" in result.output
