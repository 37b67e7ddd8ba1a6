"""Pair filters: margin (min/max, budget), length guard and CHES on the real tiny model, over real
Parquet shards built from real hh-rlhf pairs or hand-built scored candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.filters.ches import ChesConfig, ChesCut, ches, ches_build, ches_score_shard
from pipeline.filters.length import LengthConfig, LengthGuard, length_bias
from pipeline.filters.margin import MarginConfig, MarginCut
from pipeline.ingest import ingest_input
from pipeline.pairs import PairsConfig, build_pairs, source_pairs
from pipeline.recipe import IngestConfig, InputSpec
from pipeline.shards import ShardWriter, iter_rows, list_shards
from pipeline.tables import PAIR
from tests.helpers import hh_slice
from tests.test_pairs import cand, write_shards


def rows(directory, prefix="part"):
    return list(iter_rows(list_shards(directory, prefix)))


def meta(row):
    return json.loads(row["metadata"])


# --- margin -----------------------------------------------------------------------------------

SCORES = [[9, 7, 7, 4, 1], [6, 5, 5, 3], [8, 2], [5, 4.5, 4, 3.5], [10, 9, 9, 9, 2]]


@pytest.fixture
def scored_pair_shards(tmp_path):
    """Two pair shards (all_above_margin, tau 0.5) with many equal margins."""
    shards = []
    for half, convs in enumerate([SCORES[:3], SCORES[3:]]):
        conversations = {
            f"h{half}c{i}": [cand(f"h{half}c{i}", f"answer {j} to {half}-{i}", float(s))
                             for j, s in enumerate(scores)]
            for i, scores in enumerate(convs)}
        base = tmp_path / f"h{half}"
        c, a = write_shards(base, conversations)
        build_pairs(c, a, base / "pairs", PairsConfig(rule="all_above_margin", tau=0.5), stage="pairs")
        shards += list_shards(base / "pairs")
    return shards


def test_margin_budget_keeps_exactly_the_n_smallest_with_deterministic_ties(tmp_path,
                                                                           scored_pair_shards):
    every = rows_of(scored_pair_shards)
    budget = 7
    margins = sorted(p["score_margin"] for p in every)
    assert margins[budget - 1] == margins[budget]  # the cut falls inside a run of equal margins

    config = MarginConfig(budget=budget)
    stats = MarginCut(config, "margin").filter_build(scored_pair_shards, tmp_path / "m")
    kept = [p for d in sorted((tmp_path / "m").iterdir()) for p in rows(d)]
    expected = sorted(every, key=lambda p: (p["score_margin"], p["pair_id"]))[:budget]
    assert [p["pair_id"] for p in sorted(kept, key=lambda p: (p["score_margin"], p["pair_id"]))] == [
        p["pair_id"] for p in expected]
    assert sum(s.rows_out for s in stats) == budget
    assert sum(s.reasons["over_budget"] for s in stats) == len(every) - budget

    # the same selection whatever the shard order
    again = MarginCut(config, "margin").filter_build(list(reversed(scored_pair_shards)), tmp_path / "r")
    kept_again = {p["pair_id"] for d in (tmp_path / "r").iterdir() for p in rows(d)}
    assert kept_again == {p["pair_id"] for p in expected}
    assert sum(s.rows_in for s in again) == len(every)


def rows_of(shards):
    return list(iter_rows(shards))


def test_margin_min_max_and_normalised(tmp_path, scored_pair_shards):
    shard = scored_pair_shards[0]
    stats = MarginCut(MarginConfig(min_margin=1.5, max_margin=5.0), "margin").filter_shard(shard, tmp_path / "abs")
    for p in rows(tmp_path / "abs"):
        assert 1.5 <= p["score_margin"] <= 5.0
    dropped = rows(tmp_path / "abs", "dropped-margin")
    for d in dropped:
        pair = json.loads(d["row"])
        assert d["reason"] == ("margin_below_min" if pair["score_margin"] < 1.5 else "margin_above_max")
    assert stats.rows_in == len(rows_of([shard])) == stats.rows_out + len(dropped)
    assert {"margin_below_min", "margin_above_max"} <= set(stats.reasons)

    MarginCut(MarginConfig(min_margin=0.5, normalized=True), "margin").filter_shard(shard, tmp_path / "norm")
    for p in rows(tmp_path / "norm"):
        assert meta(p)["margin_normalized"] >= 0.5
    # first conversation [9, 7, 7, 4, 1]: 9 vs 4 is 5/8 of the spread, 7 vs 4 only 3/8
    kept = {(p["score_chosen"], p["score_rejected"]) for p in rows(tmp_path / "norm")
            if p["conversation_id"] == "h0c0"}
    assert (9.0, 4.0) in kept and (7.0, 4.0) not in kept

    with pytest.raises(ValueError, match="cutoff"):
        MarginCut(MarginConfig(budget=3), "margin").filter_shard(shard, tmp_path / "x")
    with pytest.raises(ValueError):
        MarginConfig(min_margin=3, max_margin=1)


def test_margin_filter_drops_pairs_without_scores(tmp_path, hh_pairs):
    # source pairs: no score margin, and TRL's margin is 0.0 (never null)
    assert {(p["score_margin"], p["margin"]) for p in rows_of(hh_pairs)} == {(None, 0.0)}
    stats = MarginCut(MarginConfig(min_margin=0.0), "margin").filter_shard(hh_pairs[0], tmp_path / "m")
    assert stats.rows_out == 0 and stats.reasons["margin_missing"] == stats.rows_in > 0
    assert MarginCut(MarginConfig(budget=1), "margin").prepare(hh_pairs) is None  # nothing eligible to rank


# --- length guard -----------------------------------------------------------------------------

def write_pairs(path, texts: list[tuple[str, str]]):
    with ShardWriter(path, PAIR) as w:
        for i, (c, r) in enumerate(texts):
            w.write({"pair_id": f"p{i}", "conversation_id": f"c{i}",
                     "prompt": [{"role": "user", "content": "q"}],
                     "chosen": [{"role": "assistant", "content": c}],
                     "rejected": [{"role": "assistant", "content": r}], "metadata": "{}"})
    return list_shards(path)


def test_length_guard_and_length_bias(tmp_path):
    shards = write_pairs(tmp_path / "p", [
        ("a much longer chosen answer with many words", "short"),  # 43 vs 5 chars
        ("tiny", "a longer rejected answer"),
        ("same size", "size same"),
        ("twice as long", "half long"),  # 13 vs 9
    ])
    stats = LengthGuard(LengthConfig(max_ratio=2.0), "length").filter_shard(shards[0], tmp_path / "g")
    dropped = rows(tmp_path / "g", "dropped-length")
    assert [json.loads(d["row"])["pair_id"] for d in dropped] == ["p0"]
    assert dropped[0]["reason"] == "length_ratio" and stats.rows_out == 3
    kept = {p["pair_id"]: meta(p) for p in rows(tmp_path / "g")}
    assert kept["p3"]["length_chosen"] == 13 and kept["p3"]["length_rejected"] == 9

    bias = length_bias(shards)
    assert bias["pairs"] == 4 and bias["equal_length"] == 1 and bias["longer_chosen"] == 2
    assert bias["longer_chosen_rate"] == pytest.approx(2 / 3)
    words = length_bias(shards, unit="words")
    assert words["longer_chosen"] == 2 and words["equal_length"] == 1  # "twice as long" 3 vs 2


# --- CHES -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory, real_data):
    """Source pairs of the first 40 real hh-rlhf harmless test rows, in two shards."""
    base = tmp_path_factory.mktemp("hh")
    src = hh_slice(real_data, base / "hh.jsonl", 40)
    ingest_input(InputSpec(path=str(src), format="hh_rlhf"), IngestConfig(shard_rows=20), base / "conv", stage="ingest")
    shards = []
    for i, conv in enumerate(list_shards(base / "conv")):
        source_pairs(conv, base / f"pairs{i}", stage="pairs")
        shards += list_shards(base / f"pairs{i}")
    return shards


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir, dtype="float32", batch_size=4)
    yield engine
    engine.close()


def direct_states(model, tokenizer, prompt: list[dict], response: str) -> np.ndarray:
    """Final-layer states predicting each response token, straight from output_hidden_states."""
    import torch

    prompt_ids = tokenizer.encode(
        tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)
    ids = prompt_ids + tokenizer.encode(response, add_special_tokens=False)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0, len(prompt_ids) - 1: len(ids) - 1].double().numpy()


def test_ches_matches_a_direct_computation_from_output_hidden_states(tmp_path, tiny_model_dir,
                                                                      tiny_engine, hh_pairs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stats = ches_score_shard(hh_pairs[0], tmp_path / "s", ChesConfig(requests_per_call=5), tiny_engine, "ches")
    scored = rows(tmp_path / "s")
    assert stats.rows_in == stats.rows_out == len(scored) == len(rows_of(hh_pairs[:1]))
    for pair in scored[:8]:
        h_plus = direct_states(model, tokenizer, pair["prompt"], pair["chosen"][0]["content"]).sum(0)
        h_minus = direct_states(model, tokenizer, pair["prompt"], pair["rejected"][0]["content"]
                                ).sum(0)
        n_plus = len(tokenizer.encode(pair["chosen"][0]["content"], add_special_tokens=False))
        n_minus = len(tokenizer.encode(pair["rejected"][0]["content"], add_special_tokens=False))
        expected = h_plus @ h_minus - h_plus @ h_plus
        expected_norm = h_plus @ h_minus / (n_plus * n_minus) - h_plus @ h_plus / n_plus ** 2
        m = meta(pair)
        assert (m["ches_tokens_chosen"], m["ches_tokens_rejected"]) == (n_plus, n_minus)
        assert m["ches"] == pytest.approx(expected, rel=1e-4, abs=1e-6 * (h_plus @ h_plus))
        assert m["ches_normalized"] == pytest.approx(expected_norm, rel=1e-4,
                                                     abs=1e-6 * (h_plus @ h_plus) / n_plus ** 2)
        assert m["ches_model"] == tiny_engine.model_id


def one_token_variant(tokenizer, text: str) -> str:
    """`text` with one word swapped so that exactly one token id differs."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for word in ["safer", "secure", "sure", "good", "well", "calm", "smart", "kind"]:
        variant = text.replace("safe", word)
        other = tokenizer.encode(variant, add_special_tokens=False)
        if len(other) == len(ids) and sum(a != b for a, b in zip(ids, other)) == 1:
            return variant
    raise AssertionError("no one-token variant found for this tokenizer")


def test_ches_identical_responses_zero_and_near_duplicates_above_unrelated(tiny_engine, hh_pairs):
    from pipeline.engines.base import ScoreRequest

    pair = rows_of(hh_pairs)[3]
    prompt = tuple((m["role"], m["content"]) for m in pair["prompt"])
    chosen = "I can't help with that, but I can point you to resources on staying safe online."
    one_token = one_token_variant(tiny_engine.tokenizer, chosen)
    unrelated = "Bananas are rich in potassium and ripen faster in a paper bag at room temp."
    states = dict(zip(["c", "o", "u"], tiny_engine.hidden_states(
        [ScoreRequest(prompt, t) for t in (chosen, one_token, unrelated)])))
    assert abs(len(states["c"]) - len(states["u"])) <= 2 and len(states["c"]) == len(states["o"])

    same, same_norm = ches(states["c"], states["c"])
    assert same == pytest.approx(0.0, abs=1e-9) and same_norm == pytest.approx(0.0, abs=1e-9)
    near, near_norm = ches(states["c"], states["o"])
    far, far_norm = ches(states["c"], states["u"])
    assert near > far and near_norm > far_norm


def test_ches_top_fraction_is_cut_over_the_whole_build(tmp_path, tiny_engine, hh_pairs):
    config = ChesConfig(top_fraction=0.25)
    score_stats, kept_stats = ches_build(hh_pairs, tmp_path / "c", config, tiny_engine, "ches")
    scored = rows_of(sorted((tmp_path / "c" / "scored").rglob("part-*.parquet")))
    n = len(scored)
    assert score_stats.rows_in == n == sum(s.rows_in for s in kept_stats)

    ranked = sorted(scored, key=lambda p: (meta(p)["ches_normalized"], p["pair_id"]), reverse=True)
    top = {p["pair_id"] for p in ranked[: int(0.25 * n)]}
    dropped = [d for d in iter_rows(sorted((tmp_path / "c" / "kept").rglob("dropped-ches-*")))]
    assert {d["row_id"] for d in dropped} == top
    assert all(d["reason"] == "ches_top_fraction" and d["stage"] == "ches" for d in dropped)
    per_shard = [s.reasons["ches_top_fraction"] for s in kept_stats]
    assert sum(per_shard) == len(top)

    # a threshold drops everything above it, whatever the fraction
    scored_shards = sorted((tmp_path / "c" / "scored").rglob("part-*.parquet"))
    threshold = meta(ranked[n // 2])["ches_normalized"]
    only = ChesConfig(top_fraction=None, threshold=threshold)
    cut = ChesCut(only, "ches")
    assert cut.prepare(scored_shards) is None
    stats = [cut.filter_shard(s, tmp_path / "t" / str(i)) for i, s in enumerate(scored_shards)]
    above = sum(meta(p)["ches_normalized"] > threshold for p in scored)
    assert sum(s.reasons["ches_above_threshold"] for s in stats) == above > 0
