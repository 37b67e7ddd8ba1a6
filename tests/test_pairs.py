"""Pair rules on hand-built scored candidates (real Parquet shards written with the real schemas)."""

from __future__ import annotations

import itertools
import json
import math

import pyarrow.parquet as pq
import pytest

from pipeline.ids import content_id
from pipeline.pairs import P_MAX, PairsConfig, build_pairs, logit_margin
from pipeline.tables import SCORED_CANDIDATE
from pipeline.shards import ShardWriter, iter_rows, list_shards
from pipeline.tables import ANNOTATION, CANDIDATE, COMPARISON, PAIR

PROMPTS = {
    "normal": "How do I keep basil alive indoors?",
    "tied": "Name a prime number.",
    "single": "Translate 'thank you' into French.",
    "failed": "Summarise the plot of Hamlet in one sentence.",
    "failed_to_one": "What is the boiling point of water at sea level?",
    "same_text": "Say hello.",
}


def cand(conv: str, response: str, score: float | None, status: str = "ok", model: str = "m1",
         origin: str = "on_policy") -> dict:
    return {"conv": conv, "response": response, "score": score, "status": status, "model": model,
            "origin": origin}


def write_shards(directory, conversations: dict[str, list[dict]]):
    """Candidate + annotation shards in the layout the generate/annotate stages write."""
    cands = ShardWriter(directory / "cand", CANDIDATE)
    anns = ShardWriter(directory / "ann", ANNOTATION)
    for conv, items in conversations.items():
        prompt = [{"role": "user", "content": PROMPTS.get(conv, conv)}]
        for i, c in enumerate(items):
            cid = content_id("k", conv, i, c["response"])
            cands.write({"candidate_id": cid, "conversation_id": conv, "prompt": prompt,
                         "response": c["response"], "model": c["model"], "origin": c["origin"],
                         "source_label": None, "sample_index": i, "params": "{}",
                         "prompt_tokens": 10, "completion_tokens": 5, "finish_reason": "stop",
                         "flags": [], "latency_s": 0.1})
            anns.write({"candidate_id": cid, "conversation_id": conv, "annotator": "judge:test",
                        "status": c["status"], "score": c["score"] if c["status"] == "ok" else None,
                        "score_argmax": None, "score_expectation": None, "aspects": None,
                        "rationale": None, "raw": "unparseable" if c["status"] != "ok" else None})
    return cands.close()[0], anns.close()[0]


MIXED = {
    "normal": [cand("normal", "Water it when the top inch of soil is dry and give it sun.", 8.0),
               cand("normal", "Basil likes light.", 5.0, model="m2"),
               cand("normal", "Just ignore it.", 2.0, model="m3", origin="off_policy")],
    "tied": [cand("tied", "7", 5.0), cand("tied", "11", 5.0), cand("tied", "13", 5.0)],
    "single": [cand("single", "Merci.", 9.0)],
    "failed": [cand("failed", "A prince avenges his father and nearly everyone dies.", 7.0),
               cand("failed", "garbled", None, status="failed"),
               cand("failed", "It is a play.", 3.0)],
    "failed_to_one": [cand("failed_to_one", "100 degrees Celsius.", 9.0),
                      cand("failed_to_one", "Hot.", None, status="failed")],
    "same_text": [cand("same_text", "Hello!", 8.0), cand("same_text", "Hello!", 3.0)],
}


def run(tmp_path, conversations, **config):
    cand_shard, ann_shard = write_shards(tmp_path, conversations)
    out = tmp_path / "out"
    stats = build_pairs(cand_shard, ann_shard, out, PairsConfig(**config), stage="pairs")
    pairs = list(iter_rows(list_shards(out))) if list_shards(out) else []
    dropped = list(iter_rows(list_shards(out, "dropped-pairs")))
    candidates = list(iter_rows(list_shards(out, "candidates")))
    return stats, pairs, dropped, candidates


def text(messages):
    return messages[0]["content"]


def test_best_vs_worst_with_ties_single_and_failed_candidates(tmp_path):
    stats, pairs, dropped, candidates = run(tmp_path, MIXED, rule="best_vs_worst")

    by_conv = {p["conversation_id"]: p for p in pairs}
    assert sorted(by_conv) == ["failed", "normal"]
    normal = by_conv["normal"]
    assert text(normal["chosen"]).startswith("Water it")
    assert text(normal["rejected"]) == "Just ignore it."
    assert (normal["score_chosen"], normal["score_rejected"], normal["score_margin"]) == (8.0, 2.0, 6.0)
    assert normal["margin"] == pytest.approx(math.log(P_MAX / (1 - P_MAX)))  # the prompt's clearest pair
    assert (normal["chosen_model"], normal["rejected_model"]) == ("m1", "m3")
    assert normal["rejected_origin"] == "off_policy"
    assert normal["prompt"] == [{"role": "user", "content": PROMPTS["normal"]}]
    assert normal["chosen"][0]["role"] == "assistant"
    assert normal["annotator"] == "judge:test" and normal["pair_rule"] == "best_vs_worst"
    assert json.loads(normal["metadata"])["margin_normalized"] == 1.0
    # the failed annotation is excluded, the rest still pairs
    assert (text(by_conv["failed"]["chosen"]), text(by_conv["failed"]["rejected"])) == (
        "A prince avenges his father and nearly everyone dies.", "It is a play.")

    reasons = {d["row_id"]: d["reason"] for d in dropped}
    assert reasons == {"tied": "all_tied", "single": "single_candidate",
                       "failed_to_one": "single_candidate", "same_text": "identical_responses"}
    assert all(d["stage"] == "pairs" for d in dropped)
    assert "1 excluded" in next(d["detail"] for d in dropped if d["row_id"] == "failed_to_one")

    assert (stats.rows_in, stats.rows_out, stats.rows_dropped, stats.outputs_written) == (6, 2, 4, 2)
    assert dict(stats.reasons) == {"all_tied": 1, "single_candidate": 2, "identical_responses": 1}

    # the candidates table keeps every candidate with its score and why it was excluded
    assert len(candidates) == sum(len(v) for v in MIXED.values())
    assert pq.read_schema(list_shards(tmp_path / "out", "candidates")[0]) == SCORED_CANDIDATE
    failed = [c for c in candidates if c["status"] == "failed"]
    assert len(failed) == 2 and all(c["excluded"] == "annotation_failed" for c in failed)
    ranks = {c["response"]: c["rank"] for c in candidates if c["conversation_id"] == "normal"}
    assert ranks == {MIXED["normal"][0]["response"]: 1, "Basil likes light.": 2, "Just ignore it.": 3}
    used = {c["response"]: (c["times_chosen"], c["times_rejected"])
            for c in candidates if c["conversation_id"] == "normal"}
    assert used["Basil likes light."] == (0, 0) and used["Just ignore it."] == (0, 1)
    assert pq.read_schema(list_shards(tmp_path / "out")[0]) == PAIR


SPREAD = {
    f"conv{i}": [cand(f"conv{i}", f"answer {j} to question {i}", float(s))
                 for j, s in enumerate(scores)]
    for i, scores in enumerate([[9, 9, 4, 1], [6, 5, 5, 3, 2], [3, 2], [8, 8, 8, 7], [5, 1, 4, 2, 3]])
}


@pytest.mark.parametrize("rule", ["best_vs_worst", "best_vs_random_lower", "all_above_margin"])
def test_no_rule_ever_pairs_a_tie_or_identical_text(tmp_path, rule):
    conversations = {**SPREAD, "dup": [cand("dup", "same", 9.0), cand("dup", "same", 2.0),
                                       cand("dup", "other", 9.0)]}
    stats, pairs, dropped, _ = run(tmp_path, conversations, rule=rule, tau=1.0)
    assert pairs
    for p in pairs:
        assert p["score_chosen"] > p["score_rejected"]
        assert text(p["chosen"]) != text(p["rejected"])
        assert p["score_margin"] == p["score_chosen"] - p["score_rejected"]
        assert p["margin"] == logit_margin(json.loads(p["metadata"])["margin_normalized"])
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    assert stats.rows_in == len(conversations)


def test_all_above_margin_returns_every_pair_at_least_tau_apart(tmp_path):
    tau = 2.0
    stats, pairs, dropped, _ = run(tmp_path, SPREAD, rule="all_above_margin", tau=tau)
    got = {(p["conversation_id"], text(p["chosen"]), text(p["rejected"])) for p in pairs}
    expected = {(conv, a["response"], b["response"])
                for conv, items in SPREAD.items()
                for a, b in itertools.permutations(items, 2) if a["score"] - b["score"] >= tau}
    assert got == expected
    # conv2 (3 vs 2) and conv3 (8, 8, 8, 7) have no pair 2 apart
    assert {d["row_id"]: d["reason"] for d in dropped} == {"conv2": "below_margin",
                                                          "conv3": "below_margin"}
    assert stats.outputs_written == len(expected)


def test_best_vs_random_lower_is_seeded_and_independent_of_shard_layout(tmp_path):
    conversations = {f"p{i}": [cand(f"p{i}", f"reply {j} for p{i}", float(10 - j)) for j in range(6)]
                     for i in range(12)}

    def chosen_rejected(directory, convs, seed):
        _, pairs, _, _ = run(directory, convs, rule="best_vs_random_lower", seed=seed)
        return {p["conversation_id"]: (text(p["chosen"]), text(p["rejected"])) for p in pairs}

    first = chosen_rejected(tmp_path / "a", conversations, seed=0)
    again = chosen_rejected(tmp_path / "b", conversations, seed=0)
    alone = chosen_rejected(tmp_path / "c", {"p5": conversations["p5"]}, seed=0)
    other_seed = chosen_rejected(tmp_path / "d", conversations, seed=1)
    assert first == again
    assert alone["p5"] == first["p5"]
    assert all(c == f"reply 0 for {conv}" for conv, (c, _) in first.items())  # always the best
    rejected = {r for _, r in first.values()}
    assert len({r.split(" for ")[0] for r in rejected}) > 1  # the lower one is drawn, not fixed
    assert other_seed != first


def test_pairwise_winners_from_comparisons(tmp_path):
    conversations = {
        "judged": [cand("judged", "Paris is the capital of France.", None),
                   cand("judged", "Lyon.", None), cand("judged", "France has no capital.", None)],
        "draw": [cand("draw", "Yes.", None), cand("draw", "Yes, certainly.", None)],
        "unjudged": [cand("unjudged", "A", None), cand("unjudged", "B", None)],
        "broken": [cand("broken", "0", None), cand("broken", "1", None)],
    }
    for items in conversations.values():  # pairwise mode needs no pointwise scores
        for c in items:
            c["status"] = "failed"
    cand_shard, ann_shard = write_shards(tmp_path, conversations)
    ids = {r["response"]: r["candidate_id"] for r in iter_rows(cand_shard)}
    comps = [
        {"conversation_id": "judged", "candidate_a": ids["Lyon."],
         "candidate_b": ids["Paris is the capital of France."], "verdict": "b", "p_a_wins": 0.1,
         "annotator": "judge:pairwise"},
        {"conversation_id": "judged", "candidate_a": ids["Paris is the capital of France."],
         "candidate_b": ids["France has no capital."], "verdict": "a", "p_a_wins": 0.8,
         "annotator": "judge:pairwise"},
        {"conversation_id": "judged", "candidate_a": ids["Lyon."],
         "candidate_b": ids["France has no capital."], "verdict": "tie", "p_a_wins": 0.5,
         "annotator": "judge:pairwise"},
        {"conversation_id": "draw", "candidate_a": ids["Yes."], "candidate_b": ids["Yes, certainly."],
         "verdict": "tie", "p_a_wins": 0.5, "annotator": "judge:pairwise"},
    ]
    comps.append({"conversation_id": "broken", "candidate_a": ids["0"], "candidate_b": ids["1"],
                  "status": "failed", "verdict": None, "error": "unparseable verdict"})
    with ShardWriter(tmp_path / "comparisons", COMPARISON) as w:
        for c in comps:
            w.write({"status": "ok", **c})
    comp_shard = list_shards(tmp_path / "comparisons")[0]
    out = tmp_path / "out"
    stats = build_pairs(cand_shard, ann_shard, out, PairsConfig(rule="pairwise_winners"),
                        comparison_shard=comp_shard, stage="pairs")
    pairs = list(iter_rows(list_shards(out)))
    got = {(text(p["chosen"]), text(p["rejected"])): p for p in pairs}
    assert set(got) == {("Paris is the capital of France.", "Lyon."),
                        ("Paris is the capital of France.", "France has no capital.")}
    win = got[("Paris is the capital of France.", "Lyon.")]
    assert win["score_chosen"] == pytest.approx(0.9) and win["score_margin"] == pytest.approx(0.8)
    assert win["margin"] == pytest.approx(math.log(0.58 / 0.42))  # P(win) 0.9 shrunk to 0.58
    assert win["annotator"] == "judge:pairwise" and win["pair_rule"] == "pairwise_winners"
    dropped = {d["row_id"]: d["reason"] for d in iter_rows(list_shards(out, "dropped-pairs"))}
    assert dropped == {"draw": "all_tied", "unjudged": "no_comparison", "broken": "comparison_failed"}
    assert (stats.rows_in, stats.rows_out, stats.outputs_written) == (4, 1, 2)


def test_candidate_rules_refuse_the_source_rule_and_missing_comparisons(tmp_path):
    cand_shard, ann_shard = write_shards(tmp_path, {"normal": MIXED["normal"]})
    with pytest.raises(ValueError, match="source_pairs"):
        build_pairs(cand_shard, ann_shard, tmp_path / "o1", PairsConfig(rule="source"), stage="pairs")
    with pytest.raises(ValueError, match="comparison"):
        build_pairs(cand_shard, ann_shard, tmp_path / "o2", PairsConfig(rule="pairwise_winners"), stage="pairs")


def test_logit_margin_is_bounded_monotone_and_zero_without_scores():
    top = math.log(P_MAX / (1 - P_MAX))
    assert logit_margin(None) == logit_margin(0.0) == logit_margin(-0.5) == 0.0
    assert 0.0 < logit_margin(0.25) < logit_margin(0.5) < logit_margin(1.0) == pytest.approx(top)
    assert logit_margin(7.0) == logit_margin(1.0)
