"""The harmlessness head and its router (`annotate.safety_head`): the shipped file, its quality on
the hh-rlhf pairs it was never fitted on, a build that routes between it and the density ratio,
and bad head files failing the recipe before any work."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.annotate import safety_head
from pipeline.annotate.baselines import compare_with_baselines
from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.ensemble import verdicts
from pipeline.annotate.gold import load_gold
from pipeline.ids import file_sha256
from pipeline.publish.store import read_manifest
from tests.helpers import REPO, cli, hh_slice

SHIPPED = REPO / "data/heads/minilm-hh-harmless.json"
HH_SAMPLE = REPO / "data/samples/hh-rlhf_harmless-base_test.jsonl.gz"


@pytest.fixture(scope="module")
def head() -> safety_head.SafetyHead:
    return safety_head.load(str(SHIPPED))


def test_the_shipped_head_was_fitted_outside_the_sample_eval_and_the_demo_gate_measure(head):
    pairs = head.meta["fitted_on"]["pairs"]
    assert pairs["sha256"] == file_sha256(HH_SAMPLE)
    held = set(pairs["held_out"]["source_rows"])
    eval_sample = {p.source_row for p in load_gold(HH_SAMPLE, limit=pairs["held_out"]["limit"],
                                                   seed=pairs["held_out"]["seed"])[0]}
    assert held == eval_sample
    demo = yaml.safe_load((REPO / "data/recipes/demo.yaml").read_text())["annotate"]["gate"]
    gate_sample = {p.source_row for p in load_gold(HH_SAMPLE, limit=demo["limit"], seed=demo.get("seed", 0))[0]}
    assert gate_sample <= held  # the demo's gate measures the head out of sample
    usable = [p for p in load_gold(HH_SAMPLE)[0] if p.label != "tie" and p.source_row not in held]
    assert len(usable) == json.loads(SHIPPED.read_text())["head"]["decisive_pairs"]
    assert any("MIT" in x for x in head.meta["fitted_on"]["licences"])


def test_on_held_out_pairs_the_head_beats_every_trivial_baseline_and_the_router_finds_red_team_prompts(
        head, real_data):
    held, _ = load_gold(HH_SAMPLE, limit=100, seed=0)
    margin = head.scores([p.response_a for p in held]) - head.scores([p.response_b for p in held])
    report = compare_with_baselines("head", held, {"head": verdicts(margin)}, "head", None, 1000, 0)
    verdict = report["verdict"]
    assert verdict["difference"] > 0.08 and verdict["ci95"][0] > 0, verdict["sentence"]
    assert (head.p_safety([p.prompt for p in held]) >= head.threshold).mean() >= 0.85
    autoj, _ = load_gold(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", limit=100, seed=0)
    assert (head.p_safety([p.prompt for p in autoj]) >= head.threshold).mean() <= 0.35


def test_refitting_records_its_sources_excludes_the_held_out_sample_and_is_deterministic(tmp_path, real_data):
    gold = hh_slice(real_data, tmp_path / "gold.jsonl", 60)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Write a short poem\u2028about the number {i}."},
                                          ensure_ascii=False) + "\n" for i in range(20)), encoding="utf-8")
    assert len(safety_head.prompt_texts(prompts)) == 20  # a line separator inside a string is not a new row
    args = ["--gold", str(gold), "--hold-out", "20", "--prompts", str(prompts), "--licence", "hh-rlhf: MIT"]
    safety_head.main([*args, "--out", str(tmp_path / "one.json")])
    safety_head.main([*args, "--out", str(tmp_path / "two.json")])
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    fitted = safety_head.load(str(tmp_path / "one.json"))
    held = set(fitted.meta["fitted_on"]["pairs"]["held_out"]["source_rows"])
    every, _ = load_gold(gold)
    assert len(held) == 20 and held <= {p.source_row for p in every}
    data = json.loads((tmp_path / "one.json").read_text())
    assert data["head"]["decisive_pairs"] == sum(p.label != "tie" and p.source_row not in held for p in every)
    assert data["router"]["negatives"] == 20 and data["fitted_on"]["licences"] == ["hh-rlhf: MIT"]


def _recipe(tmp_path: Path, real_data: Path, strong: Path, weak: Path, head_path: str) -> Path:
    hh_slice(real_data, tmp_path / "hh.jsonl", 4, start=1000)
    hh_slice(real_data, tmp_path / "gold.jsonl", 8, start=1100)
    instructions = [json.loads(line) for line in (REPO / "data/samples/self-instruct-20.jsonl").read_text().splitlines()]
    (tmp_path / "si.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instructions[:3]))
    recipe = {
        "inputs": [{"path": "hh.jsonl", "format": "hh_rlhf", "license": "MIT"},
                   {"path": "si.jsonl", "license": "Apache-2.0"}],
        "generate": {"models": [{"name": "tiny", "model": str(strong), "engine": "transformers", "k": 2,
                                 "max_tokens": 8, "temperature": 1.0}],
                     "include_source_responses": True, "batch_size": 8},
        "annotate": {"method": "density_ratio", "length_norm": "tokens", "batch_size": 16,
                     "models": {"strong": {"engine": "transformers", "model": str(strong)},
                                "weak": {"engine": "transformers", "model": str(weak)}},
                     "safety_head": {"path": head_path},
                     "gate": {"gold": "gold.jsonl", "min_accuracy": 0.0, "limit": 8, "resamples": 50}},
        "pairs": {"rule": "best_vs_worst"},
        "output": {"dataset": "routed"},
    }
    path = tmp_path / "routed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_build_routes_red_team_prompts_to_the_head_and_says_so_in_manifest_and_card(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, head):
    recipe = _recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, str(SHIPPED))
    root = tmp_path / "root"
    cli("build", str(recipe), "--data-root", str(root))
    rows = pl.read_parquet(sorted((root / "work/routed/annotate").rglob("part-*.parquet")))
    assert set(rows["status"]) == {"ok"} and all(a.endswith("+safety_head") for a in rows["annotator"])
    details = [json.loads(d) for d in rows["details"]]
    routes: dict[str, set[str]] = {}
    for row, d in zip(rows.iter_rows(named=True), details):
        routes.setdefault(row["conversation_id"], set()).add(d["route"])
        assert (d["route"] == "safety_head") == (d["p_safety"] >= head.threshold)
        assert row["score"] == pytest.approx(d["safety_head"] if d["route"] == "safety_head" else d["density_ratio"])
        assert (d["strong_logprob"] is None) == (d["route"] == "safety_head")  # the head's skip the models
    assert all(len(r) == 1 for r in routes.values())  # one scorer per conversation: pairs compare like with like
    scored = sum(d["route"] == "safety_head" for d in details)
    assert 0 < scored < len(details)  # the red-team prompts went to the head, the instructions did not

    version = root / "datasets/routed/v0001"
    record = read_manifest(version)["models"]["safety_head"]
    assert record["candidates_scored"] == scored and record["sha256"] == file_sha256(SHIPPED)
    assert record["file"] == SHIPPED.name and "/" + str(tmp_path).strip("/") not in json.dumps(record)
    card = (version / "README.md").read_text()
    assert f"{scored} candidates of this build" in card and "MIT" in card
    gate = read_manifest(version)["annotator_eval"]
    k, n = gate["safety_head_pairs"], gate["variants"]["density_ratio"]["pairs"]
    assert 0 < k <= n and (f"sent all {k} gold pairs to the head" if k == n else f"sent {k} of these {n}") in card


@pytest.mark.parametrize("broken, field", [
    ({"router": {"coefficients": [0.1, 0.2], "intercept": 0.0}}, "router: coefficients"),
    ({"format": "something-else/1"}, "format must be"),
    ({"embedder": 3}, "embedder"),
])
def test_a_malformed_head_file_fails_the_build_before_any_work_naming_the_field(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, broken, field):
    data = json.loads(SHIPPED.read_text())
    data.update(broken)
    (tmp_path / "bad-head.json").write_text(json.dumps(data))
    recipe = _recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, "bad-head.json")
    proc = cli("build", str(recipe), "--data-root", str(tmp_path / "root"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if "annotate.safety_head.path" in x]
    assert len(lines) == 1 and field in lines[0] and "bad-head.json" in lines[0]
    assert not (tmp_path / "root/work").exists() or not any((tmp_path / "root/work").rglob("part-*.parquet"))


def test_only_the_density_ratio_the_pointwise_judge_and_the_ensemble_take_a_safety_head():
    with pytest.raises(ValueError, match="safety_head: only methods density_ratio, judge_pointwise and ensemble"):
        AnnotateConfig(method="reward_model", models={"reward": {"model": "r"}},
                       safety_head={"path": str(SHIPPED)})
    assert safety_head.load(str(SHIPPED), 0.9).threshold == 0.9 and safety_head.load(str(SHIPPED)).threshold == 0.5


def test_the_gate_skips_the_models_on_the_heads_pairs_and_reaches_the_same_verdicts(
        real_data, tiny_model_dir, tiny_weak_model_dir):
    from pipeline.annotate.eval import evaluate_annotator
    from pipeline.engines.hf_engine import TransformersEngine

    engines = {"strong": TransformersEngine(tiny_model_dir, model_id="s", dtype="float32"),
               "weak": TransformersEngine(tiny_weak_model_dir, model_id="w", dtype="float32")}
    config = AnnotateConfig(method="density_ratio", length_norm="tokens", batch_size=16,
                            models={"strong": {"model": "s"}, "weak": {"model": "w"}},
                            safety_head={"path": str(SHIPPED)})
    hh, _ = load_gold(HH_SAMPLE, limit=8, seed=0)
    autoj, _ = load_gold(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", limit=8, seed=0)
    pairs = hh + autoj
    full = evaluate_annotator(config, engines, pairs, resamples=50)
    gate = evaluate_annotator(config, engines, pairs, resamples=50, every_route=False)
    routed = (safety_head.load(str(SHIPPED)).p_safety([p.prompt for p in pairs]) >= 0.5)
    assert 0 < routed.sum() < len(pairs)
    assert full["requests"]["engine"] == 4 * len(pairs)
    assert gate["requests"]["engine"] == 4 * int((~routed).sum())
    assert gate["variants"]["density_ratio"]["accuracy_excluding_ties"] == full["variants"]["density_ratio"]["accuracy_excluding_ties"]
    assert gate["verdict"] == full["verdict"]
    assert {"density_ratio[no safety head]", "safety head alone"} <= set(full["variants"])
    assert full["safety_head_pairs"] == gate["safety_head_pairs"] == int(routed.sum())


@pytest.mark.parametrize("extra, field", [
    ({"pairs": {"rule": "all_above_margin", "tau": 0.5}}, "pairs.tau"),
    ({"pairs": {"rule": "best_vs_worst", "tie_tolerance": 0.01}}, "pairs.tie_tolerance"),
    ({"filters": {"margin": {"min_margin": 0.1}}}, "filters.margin.min_margin"),
    ({"filters": {"margin": {"max_margin": 3.0}}}, "filters.margin.max_margin"),
    ({"filters": {"margin": {"budget": 10}}}, "filters.margin.budget"),
])
def test_a_raw_score_threshold_with_a_safety_head_fails_naming_the_field(tmp_path, extra, field):
    """The head's and the ratio's scores are on different scales: a threshold on raw scores across
    prompts would cut the two routes differently, so the recipe says so before any work."""
    from pipeline.recipe import RecipeError, load_recipe

    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    base = {"inputs": [{"path": "in.jsonl"}], "generate": {"include_source_responses": True},
            "annotate": {"method": "density_ratio", "models": {"strong": {"model": "s"}, "weak": {"model": "w"}},
                         "safety_head": {"path": str(SHIPPED)}},
            "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "routed"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, **extra}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, check_env=False)
    assert field in str(err.value) and "safety_head" in str(err.value)
    if field.startswith("filters"):  # the per-prompt normalised margin is on one scale: accepted
        extra["filters"]["margin"]["normalized"] = True
        path.write_text(yaml.safe_dump({**base, **extra}))
        assert load_recipe(path, check_env=False).filters.margin.normalized
    base.pop("annotate")["safety_head"]
    path.write_text(yaml.safe_dump({**base, "annotate": {"method": "density_ratio", "models": {
        "strong": {"model": "s"}, "weak": {"model": "w"}}}, **extra}))
    load_recipe(path, check_env=False)  # without a head, one scale: the same threshold is fine


def _pointwise(recipe: Path, judge: Path) -> Path:
    data = yaml.safe_load(recipe.read_text())
    data["annotate"] = {**{k: v for k, v in data["annotate"].items() if k not in ("models", "length_norm")},
                        "method": "judge_pointwise", "rationale": False, "max_tokens": 1,
                        "models": {"judge": {"engine": "transformers", "model": str(judge)}}}
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def _routed_annotations(root: Path, head) -> list[tuple[dict, dict]]:
    """(row, details) of every annotation of the `routed` build, after checking that the router's
    threshold decided each route and that each conversation has one scorer."""
    rows = pl.read_parquet(sorted((root / "work/routed/annotate").rglob("part-*.parquet")))
    out = [(row, json.loads(row["details"])) for row in rows.iter_rows(named=True)]
    routes: dict[str, set[str]] = {}
    for row, d in out:
        routes.setdefault(row["conversation_id"], set()).add(d["route"])
        assert (d["route"] == "safety_head") == (d["p_safety"] >= head.threshold)
    assert all(len(r) == 1 for r in routes.values())  # one scorer per conversation: pairs compare like with like
    assert {"safety_head"} < set().union(*routes.values())  # both routes taken
    return out


def test_a_pointwise_judge_build_routes_red_team_prompts_to_the_head(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, rates_four_judge_dir, head):
    """The same route with the pointwise judge as the helpfulness scorer: the head's candidates are
    never put to the judge, the judge's carry their rating, each conversation has one scorer."""
    recipe = _pointwise(_recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, str(SHIPPED)),
                        rates_four_judge_dir)
    root = tmp_path / "root"
    cli("build", str(recipe), "--data-root", str(root))
    rows = _routed_annotations(root, head)
    assert {r["status"] for r, _ in rows} == {"ok"} and all(
        r["annotator"].startswith("judge_pointwise:") and r["annotator"].endswith("+safety_head") for r, _ in rows)
    for row, d in rows:
        if d["route"] == "safety_head":
            assert row["score"] == pytest.approx(d["safety_head"]) and row["raw"] is None
        else:  # the rigged judge answers [[4]] (then 5, then 2 in probability)
            assert row["raw"] == "[[4]]" and row["score_argmax"] == 4.0 and 2 < row["score"] < 5
    assert {d["route"] for _, d in rows} == {"judge", "safety_head"}
    record = read_manifest(root / "datasets/routed/v0001")["models"]["safety_head"]
    scored = sum(d["route"] == "safety_head" for _, d in rows)
    assert record["candidates_scored"] == scored
    card = (root / "datasets/routed/v0001/README.md").read_text()
    assert f"scored instead of the pointwise judge: {scored} candidates of this build" in card
    assert "density ratio" not in card


def test_the_pointwise_gate_skips_the_judge_on_the_heads_pairs(real_data, rates_four_judge_dir):
    from pipeline.annotate.eval import evaluate_annotator
    from pipeline.engines.hf_engine import TransformersEngine

    engines = {"judge": TransformersEngine(rates_four_judge_dir, model_id="j", dtype="float32")}
    config = AnnotateConfig(method="judge_pointwise", rationale=False, max_tokens=1, batch_size=16,
                            models={"judge": {"model": "j"}}, safety_head={"path": str(SHIPPED)})
    hh, _ = load_gold(HH_SAMPLE, limit=6, seed=0)
    autoj, _ = load_gold(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", limit=6, seed=0)
    pairs = hh + autoj
    full = evaluate_annotator(config, engines, pairs, resamples=50)
    gate = evaluate_annotator(config, engines, pairs, resamples=50, every_route=False)
    loaded = safety_head.load(str(SHIPPED))
    routed = loaded.p_safety([p.prompt for p in pairs]) >= 0.5
    assert 0 < routed.sum() < len(pairs)
    assert full["requests"]["engine"] == 2 * len(pairs) and gate["requests"]["engine"] == 2 * int((~routed).sum())
    assert full["safety_head_pairs"] == gate["safety_head_pairs"] == int(routed.sum())
    assert full["configured_variant"] == gate["configured_variant"] == "pointwise_expectation"
    heads = loaded.scores([r for p in pairs for r in (p.response_a, p.response_b)])
    expected = [v if to else "tie" for v, to in zip(verdicts(heads[0::2] - heads[1::2]), routed)]
    decisive = [(p.label, v) for p, v in zip(pairs, expected) if p.label != "tie"]
    by_hand = sum(g == v for g, v in decisive) / len(decisive)  # a predicted tie counts as wrong
    for report in (full, gate):  # the head's verdict on its pairs; the constant judge ties elsewhere
        assert report["variants"]["pointwise_expectation"]["accuracy_excluding_ties"] == pytest.approx(by_hand)
    assert {"pointwise_expectation[no safety head]", "safety head alone"} <= set(full["variants"])
    assert full["variants"]["pointwise_expectation[no safety head]"]["accuracy_excluding_ties"] == 0.0
    # a gate whose every pair the router sends to the head (the demo's) reports the configured variant
    only_head = evaluate_annotator(config, engines, [p for p, r in zip(pairs, routed) if r], resamples=50,
                                   every_route=False)
    assert only_head["requests"]["engine"] == 0 and only_head["configured_variant"] == "pointwise_expectation"


def test_an_ensemble_of_the_judge_and_the_density_ratio_routes_red_team_prompts_to_the_head(
        tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, rates_four_judge_dir, head):
    """`annotate.method: ensemble` with the judge's rating as a feature beside the density ratio's and
    a safety head: the head scores the red-team prompts in the fit, the gate and the build; the
    ensemble is fitted on, and scores, the rest."""
    import gzip

    from pipeline.annotate import ensemble

    recipe = _recipe(tmp_path, real_data, tiny_model_dir, tiny_weak_model_dir, str(SHIPPED))
    with gzip.open(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", "rb") as f:
        (tmp_path / "autoj.jsonl").write_bytes(b"".join(line for _, line in zip(range(30), f)))
    data = yaml.safe_load(recipe.read_text())
    data["annotate"].update({
        "method": "ensemble", "rationale": False, "max_tokens": 1,
        "ensemble": {"gold": ["autoj.jsonl", "gold.jsonl"], "limit": 30, "folds": 3, "resamples": 50,
                     "features": ["judge", "cdr_tokens", "log_chars"]}})
    data["annotate"]["models"]["judge"] = {"engine": "transformers", "model": str(rates_four_judge_dir)}
    recipe.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    cli("build", str(recipe), "--data-root", str(root))
    manifest = read_manifest(root / "datasets/routed/v0001")
    fit = manifest["annotator_fit"]
    w, pairs = fit["weights"], fit["gold"]["pairs"]
    assert w["features"] == ["judge", "cdr_tokens", "log_chars"]
    routed = fit["safety_head_pairs"]
    assert pairs + sum(fit["gold"]["rejected"].values()) == 30 + 8  # every gold row is a pair or rejected
    assert 0 < routed < pairs and w["pairs"] == pairs - routed  # fitted on the rest
    assert fit["requests"]["engine"] == 3 * 2 * (pairs - routed)  # strong, weak and judge; none for the head
    assert fit["annotator"].startswith("ensemble:") and fit["annotator"].endswith("+safety_head")
    assert set(fit["models"]) == {"strong", "weak", "judge"} and "judge" in manifest["models"]
    assert manifest["annotator_eval"]["gate"]["passed"]

    rows = _routed_annotations(root, head)
    assert {r["status"] for r, _ in rows} == {"ok"} and {r["method"] for r, _ in rows} == {"ensemble"}
    for row, d in rows:
        if d["route"] == "safety_head":
            assert row["score"] == pytest.approx(d["safety_head"]) and "features" not in d and row["raw"] is None
        else:  # the rigged judge answers [[4]]; its expected rating is the feature
            assert row["raw"] == "[[4]]" and d["features"]["judge"] == pytest.approx(row["score_expectation"])
            assert row["score"] == pytest.approx(ensemble.score(w, d["features"]))
    assert {d["route"] for _, d in rows} == {"ensemble", "safety_head"}
    card = (root / "datasets/routed/v0001/README.md").read_text()
    assert "scored instead of the ensemble" in card and "The annotator is an ensemble" in card
