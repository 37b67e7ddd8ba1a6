"""eval-annotator against trivial baselines on real Auto-J pairs: hand-counted baseline accuracies,
paired bootstrap intervals (exactly [0, 0] for an annotator equal to a baseline, narrower than
unpaired ones on correlated verdicts), the recipe's length guard, the one-sentence verdict, and
the per-request cache (a rerun asks the engines nothing)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.annotate import AnnotateConfig
from pipeline.annotate.baselines import compare_with_baselines, recipe_length_guard, trivial_verdicts
from pipeline.annotate.config import Criteria
from pipeline.annotate.eval import (LABELS, accuracy_resampled, evaluate_annotator, resample_indices,
                                    write_report)
from pipeline.annotate.gold import load_gold
from pipeline.recipe import RecipeError
from tests.annotate.test_annotate_eval import AUTOJ, AUTOJ_LABEL, raw_rows


@pytest.fixture(scope="module")
def autoj(real_data):
    """240 Auto-J pairs and, for the hand counts, their raw rows."""
    pairs, _ = load_gold(real_data / AUTOJ, limit=240, seed=5)
    raw = raw_rows(real_data / AUTOJ)
    return pairs, [raw[p.source_row] for p in pairs]


def hand_accuracy(gold: list[str], pick) -> float:
    """Right picks over the pairs whose gold label is not a tie (a tie picked counts as wrong)."""
    decided = [i for i, g in enumerate(gold) if g != "tie"]
    return sum(pick(i) == gold[i] for i in decided) / len(decided)


def test_trivial_baselines_score_the_hand_counted_accuracy(autoj):
    from sklearn.metrics import cohen_kappa_score

    pairs, rows = autoj
    gold = [AUTOJ_LABEL[r["label"]] for r in rows]
    n1, n2 = [len(r["response 1"]) for r in rows], [len(r["response 2"]) for r in rows]
    picks = {"longer_response": lambda i: "a" if n1[i] > n2[i] else "b" if n2[i] > n1[i] else "tie",
             "shorter_response": lambda i: "a" if n1[i] < n2[i] else "b" if n2[i] < n1[i] else "tie",
             "first_position": lambda i: "a"}
    report = compare_with_baselines("gold", pairs, {"x": gold}, "x", resamples=200)
    b = report["baselines"]
    for name, pick in picks.items():
        hand = hand_accuracy(gold, pick)
        assert b["trivial"][name]["accuracy_excluding_ties"] == pytest.approx(hand), name
        assert b["trivial"][name]["cohen_kappa"] == pytest.approx(
            cohen_kappa_score(gold, [pick(i) for i in range(len(gold))], labels=LABELS)), name
        # an annotator that always agrees with the gold beats each baseline by 1 - its accuracy
        assert b["differences"]["x"][name]["difference"] == pytest.approx(1 - hand), name
    assert b["trivial"]["first_position"]["cohen_kappa"] == pytest.approx(0.0)
    assert b["best_trivial"] == "longer_response" and report["verdict"]["beats_best_trivial_baseline"]

    # per Auto-J scenario group, counted from the raw `scenario` field
    assert [p.category for p in pairs] == [r["scenario"] for r in rows]
    assert {p.group for p in pairs if p.category == "code_generation"} <= {"Code"}
    by = b["by_group"]
    assert {g: m["pairs"] for g, m in by.items()} == Counter(p.group for p in pairs) and len(by) == 8
    for group, m in by.items():
        sel = [i for i, p in enumerate(pairs) if p.group == group]
        hand = hand_accuracy([gold[i] for i in sel], lambda j: picks["longer_response"](sel[j]))
        assert m["baselines"]["longer_response"] == pytest.approx(hand), group
        assert m["annotator"] == 1.0


def test_an_annotator_equal_to_a_baseline_gets_a_paired_interval_of_exactly_zero(autoj):
    pairs, _ = autoj
    longer = trivial_verdicts(pairs)["longer_response"]
    report = compare_with_baselines("same", pairs, {"x": longer}, "x", resamples=500, seed=3)
    assert report["baselines"]["differences"]["x"]["longer_response"] == {"difference": 0.0, "ci95": [0.0, 0.0]}
    v = report["verdict"]
    acc, counted = v["annotator_accuracy"], sum(p.label != "tie" for p in pairs)
    assert v["baseline"] == "longer_response" and v["baseline_accuracy"] == acc
    assert v["beats_best_trivial_baseline"] is False
    assert v["sentence"] == (f"same (x, {acc:.3f}) does not beat the best trivial baseline (longer response, "
                             f"{acc:.3f}): +0.000 [0.000, 0.000] (paired bootstrap 95% CI, {counted} pairs "
                             "without a gold tie).")


def test_the_paired_interval_is_narrower_than_an_unpaired_one_on_correlated_verdicts(autoj):
    pairs, _ = autoj
    gold = [p.label for p in pairs]
    longer = trivial_verdicts(pairs)["longer_response"]
    better = list(longer)  # "longer wins", put right on 10 pairs where it is wrong
    for i in [i for i, (g, v) in enumerate(zip(gold, longer)) if g != "tie" and v != g][:10]:
        better[i] = gold[i]
    report = compare_with_baselines("ann", pairs, {"x": better}, "x", resamples=1000, seed=0)
    d = report["baselines"]["differences"]["x"]["longer_response"]
    counted = sum(g != "tie" for g in gold)
    assert d["difference"] == pytest.approx(10 / counted)
    lo, hi = d["ci95"]
    g, a, b = (np.asarray(x, object) for x in (gold, better, longer))
    unpaired = (accuracy_resampled(g, a, resample_indices(len(g), 1000, 1))
                - accuracy_resampled(g, b, resample_indices(len(g), 1000, 2)))
    lo_u, hi_u = np.percentile(unpaired, [2.5, 97.5])
    assert 0 < lo <= d["difference"] <= hi  # the same pairs: only the 10 changed ones differ
    assert lo_u < 0 < hi_u  # two independent samples: lost in their noise
    assert hi - lo < (hi_u - lo_u) / 2
    v = report["verdict"]
    assert v["beats_best_trivial_baseline"] is True
    assert v["sentence"].startswith(
        f"ann (x, {v['annotator_accuracy']:.3f}) beats the best trivial baseline (longer response, "
        f"{v['baseline_accuracy']:.3f}) by +{10 / counted:.3f} [{lo:.3f}, {hi:.3f}]")


def test_the_length_guarded_annotator_drops_what_the_recipe_guard_drops(autoj, tmp_path):
    pairs, rows = autoj
    annotate = "annotate:\n  method: reward_model\n  models: {reward: {model: x}}\n"
    recipe = tmp_path / "guarded.yaml"
    recipe.write_text(annotate + "filters:\n  length:\n    max_ratio: 1.5\n")
    guard = recipe_length_guard(recipe)
    assert (guard.max_ratio, guard.unit) == (1.5, "chars")
    gold = [AUTOJ_LABEL[r["label"]] for r in rows]
    n1, n2 = [len(r["response 1"]) for r in rows], [len(r["response 2"]) for r in rows]
    longer = trivial_verdicts(pairs)["longer_response"]  # as the annotator: its winner is the longer
    dropped = [max(x, y) > 1.5 * max(min(x, y), 1) for x, y in zip(n1, n2)]
    report = compare_with_baselines("g", pairs, {"x": longer}, "x", guard, resamples=100)
    lg = report["baselines"]["length_guarded"]
    assert lg["dropped"] == sum(dropped) > 0
    assert lg["accuracy_excluding_ties"] == pytest.approx(
        hand_accuracy(gold, lambda i: "tie" if dropped[i] else longer[i]))
    assert report["baselines"]["differences"]["x"]["length_guarded"]["difference"] > 0

    for text in (annotate, annotate + "filters:\n  length:\n    unit: words\n"):  # a guard that drops nothing
        recipe.write_text(text)
        assert recipe_length_guard(recipe) is None
    recipe.write_text(annotate + "filters:\n  length:\n    max_ratio: 1.5\n    ratio: 2\n")
    with pytest.raises(RecipeError, match="filters.length.ratio: unknown key"):
        recipe_length_guard(recipe)


class Counting:
    """An engine that counts the requests it is sent."""

    def __init__(self, engine):
        self.engine, self.model_id, self.capabilities = engine, engine.model_id, engine.capabilities
        self.requests = 0

    def score(self, requests):
        self.requests += len(requests)
        return self.engine.score(requests)

    def generate(self, requests):
        self.requests += len(requests)
        return self.engine.generate(requests)

    def close(self):
        self.engine.close()


def verdict_fields(report: dict) -> dict:
    return {"variants": {k: {f: v for f, v in m.items() if not f.startswith("seconds")}
                         for k, m in report["variants"].items()},
            "baselines": report["baselines"], "verdict": report["verdict"]}


def test_a_rerun_and_another_normalisation_ask_the_engines_nothing(real_data, tiny_model_dir,
                                                                   tiny_weak_model_dir, tmp_path, capsys):
    from pipeline.engines.hf_engine import TransformersEngine

    pairs, _ = load_gold(real_data / AUTOJ, limit=6, seed=19)
    engines = {"strong": Counting(TransformersEngine(tiny_model_dir, dtype="float32")),
               "weak": Counting(TransformersEngine(tiny_weak_model_dir, dtype="float32"))}

    def run(config):
        for e in engines.values():
            e.requests = 0
        report = evaluate_annotator(config, engines, pairs, resamples=50, cache_dir=tmp_path / "cache")
        return report, {role: e.requests for role, e in engines.items()}

    config = AnnotateConfig(method="density_ratio", models={"strong": {"model": "s"}, "weak": {"model": "w"}})
    first, calls = run(config)
    assert calls == {"strong": 12, "weak": 12}
    assert first["requests"] == {"engine": 24, "cached": 0, "cache": str(tmp_path / "cache" / "scores.sqlite")}
    err = capsys.readouterr().err
    assert "12/24 requests (0 cached)" in err and "ETA" in err and "24 requests run, 0 cached" in err

    again, calls = run(config)
    assert calls == {"strong": 0, "weak": 0} and again["requests"]["cached"] == 24
    assert verdict_fields(again) == verdict_fields(first)
    assert "24 engine requests came from the cache" in (write_report(again, tmp_path / "r")[1]).read_text()

    per_token, calls = run(config.model_copy(update={"length_norm": "tokens"}))  # the same log-probs
    assert calls == {"strong": 0, "weak": 0}
    assert (per_token["variants"]["density_ratio"]["predicted"]
            == first["variants"]["density_ratio[length_norm=tokens]"]["predicted"])

    _, calls = run(config.model_copy(update={"criteria": Criteria(default="Be brief.")}))
    assert calls == {"strong": 12, "weak": 0}  # criteria reach the strong model only
    for e in engines.values():
        e.close()


def test_a_judge_rerun_is_served_from_the_cache_and_the_reports_carry_the_verdict(
        real_data, position_one_judge_dir, tmp_path):
    from pipeline.engines.hf_engine import TransformersEngine

    pairs, _ = load_gold(real_data / AUTOJ, limit=8, seed=18)
    judge = Counting(TransformersEngine(position_one_judge_dir, model_id="position-one-judge"))
    config = AnnotateConfig(method="judge_pairwise", models={"judge": {"model": "j"}}, max_tokens=1,
                            rationale=False)
    first = evaluate_annotator(config, {"judge": judge}, pairs, resamples=100, cache_dir=tmp_path)
    assert judge.requests == 16  # both orders
    judge.requests = 0
    again = evaluate_annotator(config, {"judge": judge}, pairs, resamples=100, cache_dir=tmp_path)
    assert judge.requests == 0 and verdict_fields(again) == verdict_fields(first)
    judge.close()

    # always "first position": the single-order verdicts are the first-position baseline exactly
    assert first["baselines"]["differences"]["single_order"]["first_position"] == {"difference": 0.0,
                                                                                   "ci95": [0.0, 0.0]}
    assert first["configured_variant"] == "expectation"
    first["gold"] = {"path": AUTOJ, "pairs": len(pairs), "seed": 18, "rejected": {}}
    js, md = write_report(first, tmp_path / "report")
    written = json.loads(js.read_text())
    assert written["verdict"]["beats_best_trivial_baseline"] is False
    text = md.read_text()
    assert f"**{written['verdict']['sentence']}**" in text
    assert "| longer response |" in text and "| first position (response A) |" in text
    assert "### By category (expectation)" in text
