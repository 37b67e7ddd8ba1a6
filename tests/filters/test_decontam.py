"""Decontamination: real benchmark items planted into real prompts in several forms are caught;
real clean prompts are not flagged (false-positive rate stated and asserted); per-benchmark report."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from pipeline.filters.decontam import (REPORT_FILE, DecontamConfig, EmbeddingTier, build_benchmark_index,
                                       decontaminate_shards, load_items, load_registry, match_texts,
                                       ngram_hits)
from pipeline.filters.normalize import normalize, normalize_texts
from pipeline.shards import count_rows, list_shards
from tests.filters.test_dedup import conversation, real_prompts, write_conversations

FALSE_POSITIVE_RATE = 0.005  # at most 0.5% of real clean prompts flagged without a verbatim overlap


@pytest.fixture(scope="session")
def bench_config(real_data) -> DecontamConfig:
    return DecontamConfig(benchmarks_root=str(real_data / "benchmarks"))


@pytest.fixture(scope="session")
def bench_index(bench_config):
    return build_benchmark_index(bench_config)


@pytest.fixture(scope="session")
def clean(real_data) -> list[str]:
    return real_prompts(real_data)


def planted_forms(text: str, rng: random.Random) -> dict[str, str]:
    words = text.split()
    changed = list(words)
    for i in rng.sample(range(len(words)), 2):
        changed[i] = "banana"
    return {
        "verbatim": text,
        "recased_respaced": "   ".join(w.upper() if i % 2 else w.lower() for i, w in enumerate(words)),
        "wrapped": f"You are a helpful tutor. Please answer the following question carefully.\n\n{text}\n\n"
                   "Explain your reasoning step by step and give the final answer at the end.",
        "short_lines": "\n".join(" ".join(words[i:i + 3]) for i in range(0, len(words), 3)),
        "few_words_changed": " ".join(changed),
    }


def test_registry_lists_every_shipped_benchmark(real_data):
    root, specs = load_registry(root=real_data / "benchmarks")
    names = {s.name for s in specs}
    assert {"gsm8k", "humaneval", "mmlu", "math", "math500", "mt_bench", "vicuna_bench", "arena_hard_v0.1",
            "arena_hard_v2.0", "ifeval", "truthfulqa_v0", "truthfulqa_v1", "arc_challenge"} <= names
    assert len([n for n in names if n.startswith("bbh_")]) == 27
    items = load_items(root, specs)
    assert len({(i.benchmark, i.item_id) for i in items}) == len(items)
    assert len({i.benchmark for i in items}) == len(specs)


def test_planted_benchmark_items_are_caught_in_every_form(bench_index, bench_config, clean, tmp_path):
    rng = random.Random(3)
    by_bench: dict[str, list] = {}
    for i, item in enumerate(bench_index.items):
        if 20 <= len(normalize(item.text).split()) <= 200:
            by_bench.setdefault(item.benchmark, []).append(i)
    chosen = []
    for name in sorted(by_bench):
        chosen += rng.sample(by_bench[name], min(2, len(by_bench[name])))
    planted = []  # (text, benchmark item index, form)
    for i in chosen:
        for form, text in planted_forms(bench_index.items[i].text, rng).items():
            planted.append((text, i, form))
    clean_part = clean[:600]
    texts = list(clean_part)
    positions = sorted(rng.sample(range(len(clean_part) + len(planted)), len(planted)))
    for pos, p in zip(positions, planted):
        texts.insert(pos, p[0])
    shards = write_conversations(tmp_path / "in", texts)
    out = tmp_path / "out"
    stats = decontaminate_shards(shards, out, bench_config, bench_index, stage="decontam")
    assert stats.rows_in == stats.rows_out + stats.rows_dropped == len(texts)
    assert count_rows(list_shards(out)) == stats.rows_out
    drops = {r["row_id"]: r for p in list_shards(out, "dropped-decontam") for r in pq.read_table(p).to_pylist()}
    assert len(drops) == stats.rows_dropped
    report = json.loads((out / REPORT_FILE).read_text())
    missed = []
    for pos, (text, i, form) in zip(positions, planted):
        rid = conversation(texts[pos], pos)["id"]
        item = bench_index.items[i]
        if rid not in drops:
            missed.append((form, item.benchmark))
            continue
        assert drops[rid]["reason"] == "contaminated_ngram"
        assert drops[rid]["stage"] == "decontam"
        assert rid in report["benchmarks"][item.benchmark]["hits"][item.item_id]
    assert not missed, missed
    assert len(chosen) >= 40  # every benchmark with items of that length contributed


def test_non_latin_benchmark_items_are_caught(bench_index, bench_config, clean):
    """Arena-Hard v2.0 has Russian, Armenian, Chinese ... questions; planted in a prompt they are
    caught like English ones (folding must not erase non-Latin letters)."""
    items = [i for i, it in enumerate(bench_index.items)
             if it.benchmark == "arena_hard_v2.0" and not it.text.isascii()
             and sum(ch.isalpha() and not ch.isascii() for ch in it.text) >= 20
             and 8 <= len(normalize(it.text).split()) <= 200][:20]
    assert len(items) >= 10
    texts = [f"{clean[k]}\n{bench_index.items[i].text}" for k, i in enumerate(items)]
    hits = ngram_hits(texts, bench_index, bench_config)
    assert [any(h.item == i for h in hs) for hs, i in zip(hits, items)] == [True] * len(items)


def test_batches_on_threads_match_exactly_like_one_batch(bench_index, bench_config, clean):
    texts = clean[:500] + [it.text for it in bench_index.items[::997]]
    one = match_texts(texts, bench_index, bench_config.model_copy(update={"workers": 1, "batch_rows": 10_000}))
    threads = match_texts(texts, bench_index, bench_config.model_copy(update={"workers": 3, "batch_rows": 41}))
    assert threads == one
    assert sum(1 for h in one if h) >= 30 and all(h.row == r for r, hs in enumerate(one) for h in hs)


def test_real_clean_prompts_false_positive_rate(bench_index, bench_config, clean, real_data):
    hits = ngram_hits(clean, bench_index, bench_config)
    norm = normalize_texts(clean).to_pylist()
    flagged = [r for r, h in enumerate(hits) if h]
    # A flag is genuine contamination when the item's normalised text occurs in the prompt
    # (AlpacaEval contains the Vicuna questions; Auto-J queries contain MT-Bench questions).
    not_verbatim = [r for r in flagged
                    if normalize(bench_index.items[hits[r][0].item].text) not in norm[r]]
    assert len(not_verbatim) / len(clean) <= FALSE_POSITIVE_RATE, [clean[r][:80] for r in not_verbatim]
    # the known real overlap is found: AlpacaEval's `vicuna` subset is the Vicuna benchmark
    alpaca = json.loads((real_data / "prompts/alpaca_eval_text-davinci-003_outputs.json").read_text())
    vicuna = [r["instruction"] for r in alpaca if r["dataset"] == "vicuna"]
    vh = ngram_hits(vicuna, bench_index, bench_config)
    caught = sum(any(bench_index.items[h.item].benchmark == "vicuna_bench" for h in hs) for hs in vh)
    assert caught >= 0.95 * len(vicuna)


def test_embedding_tier_catches_rewordings_that_ngrams_miss(real_data, clean, tmp_path):
    config = DecontamConfig(benchmarks_root=str(real_data / "benchmarks"), benchmarks=["mt_bench"],
                            embedding=EmbeddingTier(enabled=True, threshold=0.85), cache_dir=str(tmp_path / "cache"))
    index = build_benchmark_index(config)
    assert list((tmp_path / "cache").glob("benchmark-embeddings-*.npy"))  # cached for the next run
    items = [it for it in index.items if it.item_id.endswith("/turns/0")][:40]
    # drop every fifth word: no 8-gram survives, the meaning does
    reworded = [" ".join(w for k, w in enumerate(it.text.split()) if k % 5 != 4) for it in items]
    reworded = [t for t, h in zip(reworded, ngram_hits(reworded, index, config)) if not h]
    assert len(reworded) >= 35  # tier 1 misses (nearly) all of them
    texts = clean[:200] + reworded
    shards = write_conversations(tmp_path / "in", texts)
    stats = decontaminate_shards(shards, tmp_path / "out", config, index, stage="decontam")
    drops = {r["row_id"]: r for p in list_shards(tmp_path / "out", "dropped-decontam")
             for r in pq.read_table(p).to_pylist()}
    caught = [conversation(t, 200 + n)["id"] in drops for n, t in enumerate(reworded)]
    assert sum(caught) >= 0.8 * len(reworded)
    clean_flagged = [conversation(t, n)["id"] in drops for n, t in enumerate(clean[:200])]
    assert sum(clean_flagged) <= 2
    assert all(r["reason"] == "contaminated_embedding" and r["match_id"].startswith("mt_bench:")
               for r in drops.values())
    assert stats.rows_in == stats.rows_out + stats.rows_dropped
