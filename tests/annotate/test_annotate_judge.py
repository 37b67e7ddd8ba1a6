"""LLM judges on real engines: the annotate stage over a real candidate shard.

The "judges" are tiny transformers models served by the real TransformersEngine: one with random
weights (its outputs are noise, so they exercise the failure path), and two whose output
distribution is rigged through their weights (always `[[A]]`, i.e. position 1; always `[[4]]`),
see tests/fixtures/judges.py.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from pipeline.annotate import AnnotateConfig, annotate_shard
from pipeline.annotate.parsing import ParseError, parse_rating
from pipeline.engines.base import ChatRequest, SamplingParams
from pipeline.shards import list_shards
from tests.fixtures.judges import autoj_rows, candidate_row, write_candidates


@pytest.fixture(scope="module")
def position_one_engine(position_one_judge_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(position_one_judge_dir, model_id="position-one-judge")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def rates_four_engine(rates_four_judge_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(rates_four_judge_dir, model_id="rates-four-judge")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir, model_id="tiny-random")
    yield engine
    engine.close()


def judge_config(method: str, **kw) -> AnnotateConfig:
    return AnnotateConfig(method=method, models={"judge": {"model": "unused-here"}}, **kw)


def read(out_dir, prefix="part") -> pl.DataFrame:
    return pl.read_parquet(list_shards(out_dir, prefix))


@pytest.mark.parametrize("expectation", [True, False])
def test_a_judge_that_prefers_position_one_yields_only_ties(tmp_path, autoj_candidate_shard,
                                                            position_one_engine, expectation):
    config = judge_config("judge_pairwise", max_tokens=1, rationale=False, expectation=expectation)
    stats = annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": position_one_engine}, stage="annotate")

    comparisons = read(tmp_path, "comparison")
    assert comparisons.height == 6  # one pair per conversation
    assert comparisons["verdict_ab"].to_list() == ["a"] * 6  # a shown first: "A" -> a
    assert comparisons["verdict_ba"].to_list() == ["b"] * 6  # b shown first: "A" -> b
    assert comparisons["verdict"].to_list() == ["tie"] * 6
    if expectation:  # P(first wins) p in one order, 1 - p in the other: the mean is 0.5
        assert comparisons["p_a_ab"].to_list() == pytest.approx([comparisons["p_a_ab"][0]] * 6)
        assert comparisons["p_a_ab"][0] > 0.6
        assert comparisons["p_a_wins"].to_list() == pytest.approx([0.5] * 6, abs=1e-9)
    reliability = json.loads((tmp_path / "annotate_stats.json").read_text())["reliability"]
    assert reliability["flip_rate"] == 1.0
    assert reliability["first_position_win_rate"] == 1.0
    assert reliability["longer_response_win_rate"] is None  # no decisive outcome at all

    annotations = read(tmp_path)
    assert annotations.height == 12 and set(annotations["status"]) == {"ok"}
    assert annotations["score"].to_list() == pytest.approx([0.5] * 12, abs=1e-9)
    assert stats.rows_in == 12 and stats.rows_out == 12 and stats.rows_dropped == 0


def test_single_order_judging_hands_every_pair_to_position_one(tmp_path, autoj_candidate_shard,
                                                               position_one_engine):
    config = judge_config("judge_pairwise", max_tokens=1, rationale=False, both_orders=False,
                          expectation=False)
    annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": position_one_engine}, stage="annotate")
    comparisons = read(tmp_path, "comparison")
    assert comparisons["verdict"].to_list() == ["a"] * 6
    assert comparisons["verdict_ba"].null_count() == 6
    reliability = json.loads((tmp_path / "annotate_stats.json").read_text())["reliability"]
    assert reliability["flip_rate"] is None  # never judged in both orders
    assert reliability["first_position_win_rate"] == 1.0


def test_expectation_score_equals_the_engines_rating_probabilities(tmp_path, autoj_candidate_shard,
                                                                   rates_four_engine):
    config = judge_config("judge_pointwise", max_tokens=1, rationale=False, rating_max=5)
    annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": rates_four_engine}, stage="annotate")
    annotations = read(tmp_path)
    assert set(annotations["status"]) == {"ok"}
    assert set(annotations["score_argmax"]) == {4.0}
    # hand computation from the engine's own top-k log-probs for one judge question
    out = rates_four_engine.generate([ChatRequest(messages=(("user", "Rate this."),), params=SamplingParams(
        temperature=0.0, max_tokens=1, logprobs=20))])[0][0]
    assert out.text == "[[4]]"
    probs = {int(t.strip("[]")): math.exp(lp) for t, lp in out.top_logprobs[0].items()
             if t.strip("[]") in {"1", "2", "3", "4", "5"}}
    hand = sum(s * p for s, p in probs.items()) / sum(probs.values())
    assert 2.0 < hand < 5.0 and hand != 4.0
    assert annotations["score_expectation"].to_list() == pytest.approx([hand] * 12, abs=1e-6)
    assert annotations["score"].to_list() == pytest.approx([hand] * 12, abs=1e-6)  # expectation wins


def test_per_aspect_ratings_are_kept(tmp_path, autoj_candidate_shard, rates_four_engine):
    config = judge_config("judge_pointwise", max_tokens=1, rationale=False, expectation=False,
                          aspects=["helpfulness", "honesty"])
    annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": rates_four_engine}, stage="annotate")
    first = read(tmp_path).row(0, named=True)
    aspects = json.loads(first["aspects"])
    assert set(aspects) == {"helpfulness", "honesty"}
    assert [a["rating"] for a in aspects.values()] == [4, 4]
    assert first["score"] == 4.0
    assert first["score_expectation"] is None  # expectation off: no log-probs were requested


def test_unparseable_judge_outputs_are_failed_annotations_never_default_scores(
        tmp_path, autoj_candidate_shard, tiny_engine):
    """The random tiny model writes noise: whatever it wrote is kept; nothing is invented."""
    config = judge_config("judge_pointwise", max_tokens=12, retries=2)
    stats = annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": tiny_engine}, stage="annotate")
    annotations = read(tmp_path)
    dropped = pl.read_parquet(list_shards(tmp_path, "dropped-annotate"))
    failed = annotations.filter(pl.col("status") == "failed")
    assert failed.height >= 1
    for row in annotations.iter_rows(named=True):
        try:
            value = parse_rating(row["raw"], 1, 5).value
        except ParseError as err:
            assert row["status"] == "failed" and row["score"] is None
            assert row["error"] == f"unparseable_judge_output: {err}"
            assert json.loads(row["details"])["seeds"] == [0, 1, 2]  # first try + 2 retries
        else:
            assert row["status"] == "ok" and row["score_argmax"] == float(value)
    assert sorted(dropped["row_id"]) == sorted(failed["candidate_id"])
    assert set(dropped["reason"]) == {"unparseable_judge_output"}
    assert stats.rows_in == 12 and stats.rows_dropped == failed.height
    assert stats.reasons["unparseable_judge_output"] == failed.height


def test_judge_that_also_generated_candidates_is_flagged(tmp_path, real_data, position_one_engine):
    row = autoj_rows(real_data, 1)[0]
    prompt = [{"role": "user", "content": row["prompt"]}]
    shard = write_candidates(tmp_path / "in" / "part-00000.parquet", [
        candidate_row("c1", prompt, row["response 1"], "position-one-judge", origin="on_policy"),
        candidate_row("c1", prompt, row["response 2"], "other-model", origin="on_policy", index=1)])
    config = judge_config("judge_pairwise", max_tokens=1, rationale=False)
    annotate_shard(shard, tmp_path / "out", config, {"judge": position_one_engine}, stage="annotate")
    summary = json.loads((tmp_path / "out" / "annotate_stats.json").read_text())
    assert summary["self_preference"] == [
        "judge model 'position-one-judge' also generated candidates (self-preference bias)"]
    assert summary["seed"] == 0 and summary["models"] == {"judge": "position-one-judge"}


def test_single_and_empty_candidates_are_failed_with_a_reason(tmp_path, position_one_engine):
    prompt = [{"role": "user", "content": "Say hi."}]
    shard = write_candidates(tmp_path / "in" / "part-00000.parquet", [
        candidate_row("c1", prompt, "Hi!", "m"),
        candidate_row("c2", prompt, "Hello.", "m"), candidate_row("c2", prompt, "   ", "m", index=1)])
    config = judge_config("judge_pairwise", max_tokens=1, rationale=False)
    stats = annotate_shard(shard, tmp_path / "out", config, {"judge": position_one_engine}, stage="annotate")
    assert stats.rows_in == 3 and stats.rows_dropped == 3
    assert dict(stats.reasons) == {"single_candidate": 2, "empty_response": 1}
    annotations = read(tmp_path / "out")
    assert annotations["score"].null_count() == 3


@pytest.mark.parametrize("method, aspects, expected", [
    # 12 candidates in batches of 4: three batches of 4 candidates' worth
    ("judge_pointwise", [], [4.0] * 3),
    # two aspects: 24 questions in batches of 4, each batch 2 candidates' worth
    ("judge_pointwise", ["helpfulness", "honesty"], [2.0] * 6),
    # 6 pairs (12 candidates) in both orders, batches of 4 pairs: 4, 2, 4, 2 pairs of half a pair's
    # 2 candidates each
    ("judge_pairwise", [], [4.0, 2.0, 4.0, 2.0]),
])
def test_judges_report_progress_batch_by_batch(tmp_path, autoj_candidate_shard, rates_four_engine,
                                               position_one_engine, method, aspects, expected):
    """The CLI's annotate bar moves as each batch of judge questions finishes, not once a shard ends."""
    from pipeline import progress

    steps: list[float] = []

    class Seen:
        def advance(self, label, rows):
            assert label == "annotate"
            steps.append(rows)

    engine = rates_four_engine if method == "judge_pointwise" else position_one_engine
    config = judge_config(method, max_tokens=1, rationale=False, batch_size=4, aspects=aspects)
    unsubscribe = progress.subscribe(Seen())
    try:
        stats = annotate_shard(autoj_candidate_shard, tmp_path, config, {"judge": engine}, stage="annotate")
    finally:
        unsubscribe()
    assert steps[:len(expected)] == pytest.approx(expected)
    assert sum(steps) == pytest.approx(stats.rows_in) and stats.rows_in == 12
