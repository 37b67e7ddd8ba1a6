"""Density-ratio reward (CDR) and reward-model scoring through the real transformers engine,
checked against log-probs computed here with a plain transformers forward pass."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.annotate import AnnotateConfig, annotate_shard
from pipeline.annotate.config import Criteria, route_criteria
from pipeline.shards import iter_rows, list_shards


def _engine(path, model_id):
    from pipeline.engines.hf_engine import TransformersEngine

    return TransformersEngine(path, model_id=model_id, dtype="float32")


@pytest.fixture(scope="module")
def strong(tiny_model_dir):
    return _engine(tiny_model_dir, "tiny-strong")


@pytest.fixture(scope="module")
def strong_again(tiny_model_dir):
    return _engine(tiny_model_dir, "tiny-strong-copy")


@pytest.fixture(scope="module")
def weak(tiny_weak_model_dir):
    return _engine(tiny_weak_model_dir, "tiny-weak")


def cdr_config(**kw) -> AnnotateConfig:
    return AnnotateConfig(method="density_ratio",
                          models={"strong": {"model": "s"}, "weak": {"model": "w"}}, **kw)


def hand_logprob(model_dir, prompt: list[dict], response: str, system: str | None = None) -> float:
    """sum_t log p(response token t | prompt, earlier response tokens), from one forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    messages = ([{"role": "system", "content": system}] if system else []) + prompt
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok.encode(prompt_ids, add_special_tokens=False)
    response_ids = tok.encode(response, add_special_tokens=False)
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.inference_mode():
        logp = model(ids).logits[0].float().log_softmax(-1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + t, token] for t, token in enumerate(response_ids)))


def annotations(out_dir) -> pl.DataFrame:
    return pl.read_parquet(list_shards(out_dir))


def test_strong_equal_to_weak_gives_exactly_zero(tmp_path, autoj_candidate_shard, strong, strong_again):
    stats = annotate_shard(autoj_candidate_shard, tmp_path, cdr_config(),
                           {"strong": strong, "weak": strong_again}, stage="annotate")
    df = annotations(tmp_path)
    assert df.height == 12 and stats.rows_out == 12
    assert df["score"].to_list() == [0.0] * 12
    details = [json.loads(d) for d in df["details"]]
    assert all(d["strong_logprob"] < 0 and d["strong_logprob"] == d["weak_logprob"] for d in details)


def test_density_ratio_reports_progress_batch_by_batch(tmp_path, autoj_candidate_shard, strong, weak):
    from pipeline import progress

    class Seen:
        steps: list[float] = []

        def advance(self, label, rows):
            assert label == "annotate"
            self.steps.append(rows)

    unsubscribe = progress.subscribe(Seen())
    try:
        stats = annotate_shard(autoj_candidate_shard, tmp_path, cdr_config(batch_size=4),
                               {"strong": strong, "weak": weak}, stage="annotate")
    finally:
        unsubscribe()
    # 12 candidates in batches of 4, through both models: six steps of 2 candidates' worth, then nothing left
    assert Seen.steps[:6] == [2.0] * 6 and sum(Seen.steps) == stats.rows_in == 12


def test_reward_matches_hand_computed_log_prob_sums(tmp_path, autoj_candidate_shard, strong, weak,
                                                    tiny_model_dir, tiny_weak_model_dir):
    annotate_shard(autoj_candidate_shard, tmp_path, cdr_config(), {"strong": strong, "weak": weak}, stage="annotate")
    scored = {r["candidate_id"]: r for r in iter_rows(list_shards(tmp_path))}
    signs = set()
    for cand in list(iter_rows(autoj_candidate_shard))[:4]:
        s = hand_logprob(tiny_model_dir, cand["prompt"], cand["response"])
        w = hand_logprob(tiny_weak_model_dir, cand["prompt"], cand["response"])
        row = scored[cand["candidate_id"]]
        assert row["score"] == pytest.approx(s - w, abs=1e-3)
        assert json.loads(row["details"])["strong_logprob"] == pytest.approx(s, abs=1e-3)
        signs.add((row["score"] > 0) == (s - w > 0))
    assert signs == {True}


def test_criteria_go_to_the_strong_model_only_and_length_normalisation(
        tmp_path, autoj_candidate_shard, strong, weak, tiny_model_dir, tiny_weak_model_dir):
    criteria = Criteria(default="Prefer concise, correct answers.")
    config = cdr_config(criteria=criteria, length_norm="tokens")
    annotate_shard(autoj_candidate_shard, tmp_path, config, {"strong": strong, "weak": weak}, stage="annotate")
    cand = next(iter_rows(autoj_candidate_shard))
    row = next(r for r in iter_rows(list_shards(tmp_path)) if r["candidate_id"] == cand["candidate_id"])
    d = json.loads(row["details"])
    s = hand_logprob(tiny_model_dir, cand["prompt"], cand["response"], system=criteria.default)
    w = hand_logprob(tiny_weak_model_dir, cand["prompt"], cand["response"])
    assert d["domain"] == "default"
    assert d["strong_logprob"] == pytest.approx(s, abs=1e-3)
    assert d["weak_logprob"] == pytest.approx(w, abs=1e-3)  # no criteria for the weak model
    assert row["score"] == pytest.approx(s / d["strong_tokens"] - w / d["weak_tokens"], abs=1e-5)


def test_router_picks_the_domain_with_most_keyword_hits():
    criteria = Criteria.model_validate({
        "default": "Be helpful.",
        "domains": {"code": {"keywords": ["python", "function", "bug"], "prompt": "Correct code."},
                    "safety": {"keywords": ["weapon", "hack"], "prompt": "Refuse harm."}}})
    ask = lambda text: route_criteria(criteria, [{"role": "user", "content": text}])  # noqa: E731
    assert ask("Fix the bug in this Python function") == ("code", "Correct code.")
    assert ask("How do I hack a python weapon hack?") == ("safety", "Refuse harm.")
    assert ask("Write a poem") == ("default", "Be helpful.")
    assert route_criteria(Criteria(), [{"role": "user", "content": "x"}]) == (None, None)


def test_reward_model_scores_match_a_forward_pass(tmp_path, autoj_candidate_shard, tiny_reward_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    engine = _engine(tiny_reward_model_dir, "tiny-rm")
    config = AnnotateConfig(method="reward_model", models={"reward": {"model": "rm"}})
    annotate_shard(autoj_candidate_shard, tmp_path, config, {"reward": engine}, stage="annotate")
    df = annotations(tmp_path)
    assert df["annotator"][0] == "rm:tiny-rm" and set(df["status"]) == {"ok"}
    cand = next(iter_rows(autoj_candidate_shard))
    tok = AutoTokenizer.from_pretrained(tiny_reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir, dtype=torch.float32)
    text = tok.apply_chat_template(cand["prompt"] + [{"role": "assistant", "content": cand["response"]}],
                                   tokenize=False)
    with torch.inference_mode():
        hand = float(model(torch.tensor([tok.encode(text, add_special_tokens=False)])).logits[0, 0])
    assert df.filter(pl.col("candidate_id") == cand["candidate_id"])["score"][0] == pytest.approx(hand, abs=1e-4)


def test_a_method_without_its_models_is_rejected_before_any_work():
    with pytest.raises(ValueError, match="density_ratio needs models.strong, models.weak"):
        AnnotateConfig(method="density_ratio")
    with pytest.raises(ValueError, match="rating_max"):
        AnnotateConfig(models={"judge": {"model": "j"}}, rating_max=10)
