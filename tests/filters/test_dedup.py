"""Dedup on real prompts: exact, MinHash near-dup recall vs brute-force Jaccard, incremental, semantic."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.filters.dedup import DedupConfig, NearDupConfig, SemanticConfig, dedup_shards
from pipeline.filters.normalize import normalize_texts
from pipeline.ids import content_id
from pipeline.shards import ShardWriter, count_rows, list_shards
from pipeline.tables import CONVERSATION


def real_prompts(real: Path) -> list[str]:
    """Distinct real prompts: AlpacaEval, self-instruct, Auto-J (first-seen order)."""
    texts = [r["instruction"] for r in json.loads(
        (real / "prompts/alpaca_eval_text-davinci-003_outputs.json").read_text())]
    texts += [json.loads(line)["instruction"] for line in
              (real / "prompts/self-instruct_user_oriented_instructions.jsonl").open()]
    with gzip.open(real / "preference/autoj_testdata_pairwise.jsonl.gz", "rt") as f:
        texts += [json.loads(line)["prompt"] for line in f]
    seen, out = set(), []
    for t, n in zip(texts, normalize_texts(texts).to_pylist()):
        if n and n not in seen:
            seen.add(n)
            out.append(t)
    return out


def conversation(text: str, n: int, source: str = "test") -> dict:
    prompt = [{"role": "user", "content": text}]
    return {"id": content_id("c", source, n, text), "source": source, "source_row": n, "format": "prompt",
            "messages": prompt, "prompt": prompt, "responses": [], "metadata": "{}"}


def write_conversations(directory: Path, texts: list[str], shard_rows: int = 250,
                        source: str = "test") -> list[Path]:
    with ShardWriter(directory, CONVERSATION, shard_rows=shard_rows) as w:
        for n, t in enumerate(texts):
            w.write(conversation(t, n, source))
    return list_shards(directory)


def mutate(text: str, rng: random.Random, edits: int) -> str:
    """A light edit: replace/delete/duplicate a few words."""
    words = text.split()
    for _ in range(edits):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = words[i][::-1]
        elif op < 0.7 and len(words) > 1:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


def shingles(norm: str, k: int = 3) -> set:
    w = norm.split()
    return {tuple(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def dropped(out: Path) -> list[dict]:
    paths = list_shards(out, "dropped-dedup")
    return [r for p in paths for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="session")
def prompts(real_data) -> list[str]:
    return real_prompts(real_data)


def check_accounting(stats, in_shards, out):
    assert stats.rows_in == stats.rows_out + stats.rows_dropped == count_rows(in_shards)
    assert count_rows(list_shards(out)) == stats.rows_out
    assert count_rows(list_shards(out, "dropped-dedup")) == stats.rows_dropped
    assert len(list_shards(out)) == len(in_shards)


def test_exact_duplicates_after_normalisation_keep_the_first(prompts, tmp_path):
    base = prompts[:300]
    variants = ["  " + t.upper().replace(" ", "\n ") + "  " for t in base[:40]]  # re-cased, re-spaced
    texts = base + variants + base[:10]
    shards = write_conversations(tmp_path / "in", texts)
    stats = dedup_shards(shards, tmp_path / "out", DedupConfig(near=NearDupConfig(enabled=False)), stage="dedup")
    check_accounting(stats, shards, tmp_path / "out")
    drops = dropped(tmp_path / "out")
    ids = [conversation(t, n)["id"] for n, t in enumerate(texts)]
    assert {d["row_id"] for d in drops} == set(ids[300:])
    by_row = {d["row_id"]: d for d in drops}
    for n in range(300, len(texts)):
        first = n - 300 if n < 340 else n - 340
        assert by_row[ids[n]]["reason"] == "exact_duplicate"
        assert by_row[ids[n]]["match_id"] == ids[first]
    kept = [r["id"] for p in list_shards(tmp_path / "out") for r in pq.read_table(p).to_pylist()]
    assert kept == ids[:300]


@pytest.mark.parametrize("sketch", ["oph", "kperm"])
def test_near_duplicate_recall_against_brute_force_jaccard(prompts, tmp_path, sketch):
    rng = random.Random(7)
    originals = [t for t in prompts if len(t.split()) >= 25][:500]
    planted = [mutate(t, rng, rng.randint(1, 3)) for t in originals[:250]]
    texts = originals + planted
    threshold = 0.8
    norm = normalize_texts(texts).to_pylist()
    sets = [shingles(n) for n in norm]
    # brute force: every row that has an earlier row at Jaccard >= threshold
    truth = {j for j in range(len(texts)) for i in range(j) if jaccard(sets[i], sets[j]) >= threshold}
    assert len(truth) >= 150  # the planted mutations really are near duplicates
    shards = write_conversations(tmp_path / "in", texts)
    config = DedupConfig(exact=False, near=NearDupConfig(threshold=threshold, sketch=sketch))
    stats = dedup_shards(shards, tmp_path / "out", config, stage="dedup")
    check_accounting(stats, shards, tmp_path / "out")
    ids = {conversation(t, n)["id"]: n for n, t in enumerate(texts)}
    drops = {ids[d["row_id"]]: ids[d["match_id"]] for d in dropped(tmp_path / "out")}
    recall = len(truth & drops.keys()) / len(truth)
    close = [jaccard(sets[r], sets[m]) >= threshold - 0.2 for r, m in drops.items()]
    assert all(m < r for r, m in drops.items())  # the earlier row is kept
    assert recall >= 0.8, recall
    assert np.mean(close) >= 0.95  # dropped rows really resemble the row they were matched to


def test_batches_on_threads_decide_exactly_like_one_batch(prompts, tmp_path):
    """Small batches on 3 threads (and the LSH bands on threads) give the same drops, in the
    same order, as one batch on one thread."""
    rng = random.Random(11)
    texts = prompts[:600] + [mutate(t, rng, 1) for t in prompts[:150]] + prompts[:50]
    shards = write_conversations(tmp_path / "in", texts, shard_rows=400)
    results = []
    for name, extra in (("one", {"batch_rows": 100_000, "workers": 1}), ("threads", {"batch_rows": 37, "workers": 3})):
        stats = dedup_shards(shards, tmp_path / name, DedupConfig(**extra), stage="dedup")
        check_accounting(stats, shards, tmp_path / name)
        results.append([(d["row_id"], d["reason"], d["match_id"]) for d in dropped(tmp_path / name)])
    assert results[0] == results[1]
    assert {r for _, r, _ in results[0]} == {"exact_duplicate", "near_duplicate"}


def test_incremental_build_drops_exactly_the_old_rows(prompts, tmp_path):
    old, new = prompts[:400], prompts[400:700]
    first = write_conversations(tmp_path / "in1", old, source="v1")
    stats1 = dedup_shards(first, tmp_path / "v1", DedupConfig(), stage="dedup")
    alone = write_conversations(tmp_path / "in-new", new, source="v2")
    assert dedup_shards(alone, tmp_path / "alone", DedupConfig(), stage="dedup").rows_dropped == 0
    kept1 = {r["id"] for p in list_shards(tmp_path / "v1") for r in pq.read_table(p).to_pylist()}
    # second build: new rows interleaved with old ones (same prompts, re-ingested under new ids)
    mixed = []
    for n in range(max(len(old), len(new))):
        mixed += ([new[n]] if n < len(new) else []) + [old[n]] if n < len(old) else [new[n]]
    second = write_conversations(tmp_path / "in2", mixed, source="v2")
    stats2 = dedup_shards(second, tmp_path / "v2", DedupConfig(), previous_indexes=[tmp_path / "v1" / "index"], stage="dedup")
    check_accounting(stats2, second, tmp_path / "v2")
    old_norm = set(normalize_texts(old).to_pylist())
    expected = {conversation(t, n, "v2")["id"] for n, t in enumerate(mixed)
                if normalize_texts([t])[0].as_py() in old_norm}
    drops = dropped(tmp_path / "v2")
    assert {d["row_id"] for d in drops} == expected
    assert stats1.rows_out == len(kept1)
    assert all(d["match_id"] in kept1 for d in drops)  # matched to the earlier version's rows


def test_semantic_dedup_catches_rewordings_and_persists_embeddings(prompts, tmp_path):
    base = [t for t in prompts if 8 <= len(t.split()) <= 40][:60]
    reworded = ["Hey, could you help me with this? " + t for t in base[:15]]
    config = DedupConfig(exact=False, near=NearDupConfig(enabled=False),
                         semantic=SemanticConfig(enabled=True, threshold=0.85))
    shards = write_conversations(tmp_path / "in", base + reworded)
    stats = dedup_shards(shards, tmp_path / "out", config, stage="dedup")
    check_accounting(stats, shards, tmp_path / "out")
    drops = dropped(tmp_path / "out")
    ids = [conversation(t, n)["id"] for n, t in enumerate(base + reworded)]
    sem = {d["row_id"]: d["match_id"] for d in drops if d["reason"] == "semantic_duplicate"}
    hit = [ids[60 + i] in sem and sem[ids[60 + i]] == ids[i] for i in range(15)]
    assert sum(hit) >= 13, hit
    assert len(sem.keys() & set(ids[:60])) <= 1  # distinct real prompts stay
    # a later build sees the persisted embeddings
    again = write_conversations(tmp_path / "in2", reworded[:5], source="v2")
    stats2 = dedup_shards(again, tmp_path / "out2", config, previous_indexes=[tmp_path / "out" / "index"], stage="dedup")
    assert stats2.rows_dropped == 5


def test_non_latin_prompts_keep_their_text(tmp_path):
    """Punctuation folding keeps letters of every script: different Chinese, Russian or Greek
    prompts are not duplicates of each other; the same one re-punctuated is."""
    texts = ["请写一首关于秋天的诗。", "请解释一下量子计算的基本原理。", "Напиши стихотворение о любви.",
             "Напиши рассказ о море.", "Γράψε ένα ποίημα για τη θάλασσα.", "🙂🙂🙂", "🙃🙃🙃",
             "请写一首关于秋天的诗！", "НАПИШИ стихотворение — о любви", "🙂🙂🙂"]
    assert normalize_texts(texts[:1]).to_pylist() == ["请写一首关于秋天的诗"]
    shards = write_conversations(tmp_path / "in", texts)
    stats = dedup_shards(shards, tmp_path / "out", DedupConfig(near=NearDupConfig(enabled=False)), stage="dedup")
    check_accounting(stats, shards, tmp_path / "out")
    ids = [conversation(t, n)["id"] for n, t in enumerate(texts)]
    # only the re-punctuated repeats (and the identical emoji-only prompt) go
    assert {d["row_id"]: d["match_id"] for d in dropped(tmp_path / "out")} == {
        ids[7]: ids[0], ids[8]: ids[2], ids[9]: ids[5]}


def edit_to_jaccard(words: list[str], low: float, high: float, rng: random.Random, vocab: list[str]
                    ) -> tuple[list[str], float] | None:
    """Random word replacements, deletions and insertions, one at a time, until the exact
    shingle Jaccard with `words` falls in [low, high) (None when an edit jumps past it)."""
    base = shingles(" ".join(words))
    out = list(words)
    for _ in range(200):
        op, i = rng.random(), rng.randrange(len(out))
        if op < 0.5:
            out[i] = rng.choice(vocab)
        elif op < 0.75 and len(out) > 4:
            del out[i]
        else:
            out.insert(i, rng.choice(vocab))
        j = jaccard(base, shingles(" ".join(out)))
        if j < low:
            return None
        if j < high:
            return out, j
    return None


@pytest.mark.parametrize("sketch,banding,min_recall", [("oph", {}, 0.97), ("kperm", {"bands": 16, "rows": 8}, 0.97)])
def test_near_duplicate_recall_at_the_threshold_on_planted_pairs_of_known_jaccard(prompts, tmp_path, sketch, banding,
                                                                                  min_recall):
    """Planted copies at exact shingle Jaccard 0.80-0.90 of their original are found (the
    candidates are verified by the exact Jaccard, not the signature estimate, which would reject
    about half of those right at 0.8); copies at 0.60-0.78 of theirs are kept; every drop has a
    row at Jaccard >= 0.8 (precision 1)."""
    rng = random.Random(5)
    norm_all = normalize_texts(prompts).to_pylist()
    vocab = sorted({w for n in norm_all for w in n.split()})
    long, kept_sets, by_shingle = [], [], {}
    for n in norm_all:  # distinct originals: no two at Jaccard >= 0.5 (the real sets have templated prompts)
        if len(n.split()) < 30:
            continue
        mine = shingles(n)
        others = {k for s in mine for k in by_shingle.get(s, ())}
        if all(jaccard(mine, kept_sets[k]) < 0.5 for k in others):
            for s in mine:
                by_shingle.setdefault(s, []).append(len(long))
            long.append(n)
            kept_sets.append(mine)
    assert len(long) >= 700
    originals, positives, negatives = long[:300], [], []
    for n in originals[:200]:
        while (got := edit_to_jaccard(n.split(), 0.8, 0.9, rng, vocab)) is None:
            pass
        positives.append((" ".join(got[0]), got[1]))
    for n in originals[200:300]:
        while (got := edit_to_jaccard(n.split(), 0.6, 0.78, rng, vocab)) is None:
            pass
        negatives.append((" ".join(got[0]), got[1]))
    texts = originals + [t for t, _ in positives] + [t for t, _ in negatives] + long[300:700]
    at_threshold = [300 + i for i, (_, j) in enumerate(positives) if j < 0.85]
    assert len(at_threshold) >= 50  # a good share sits right at the threshold
    shards = write_conversations(tmp_path / "in", texts)
    config = DedupConfig(exact=False, near=NearDupConfig(threshold=0.8, sketch=sketch, **banding))
    stats = dedup_shards(shards, tmp_path / "out", config, stage="dedup")
    check_accounting(stats, shards, tmp_path / "out")
    ids = {conversation(t, n)["id"]: n for n, t in enumerate(texts)}
    drops = {ids[d["row_id"]]: ids[d["match_id"]] for d in dropped(tmp_path / "out")}
    wrong = {300 + i: drops[300 + i] for i in range(200) if drops.get(300 + i, i) != i}
    assert not wrong, wrong  # matched to its original
    recall = sum(300 + i in drops for i in range(200)) / 200
    recall_at_threshold = sum(r in drops for r in at_threshold) / len(at_threshold)
    assert recall >= min_recall, recall
    assert recall_at_threshold >= 0.95, recall_at_threshold
    assert not drops.keys() & set(range(500, 600))  # the copies below the threshold stay
    sets = [shingles(n) for n in normalize_texts(texts).to_pylist()]
    assert all(any(jaccard(sets[r], sets[o]) >= 0.8 for o in range(len(texts)) if o != r) for r in drops)


def test_the_index_knows_a_local_embedder_by_its_files(tmp_path):
    """A version's dedup index records its embedding model by identity: an embedder directory
    rewritten in place makes the old embeddings a mismatch, not silently comparable."""
    from pipeline.filters.dedup import index_meta

    model = tmp_path / "embedder"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first")
    config = DedupConfig(semantic={"enabled": True, "model": str(model)})
    before = index_meta(config)["semantic_model"]
    assert before.startswith("embedder@") and str(tmp_path) not in before
    (model / "model.safetensors").write_bytes(b"second, retrained")
    assert index_meta(config)["semantic_model"] != before
    assert index_meta(DedupConfig(semantic={"enabled": True}))["semantic_model"] == "packaged:all-MiniLM-L6-v2"


def test_an_embedder_rewritten_in_place_is_loaded_afresh_in_a_long_lived_process(tmp_path):
    """A Dask worker embeds with the model its index records: the process's loaded embedder is kept
    per identity, so rewriting the directory between two builds loads the new files, not the old."""
    import shutil

    from pipeline.filters.embed import embed_texts, load_model, model_path

    model = tmp_path / "embedder"
    shutil.copytree(model_path("packaged:all-MiniLM-L6-v2"), model)
    first = load_model(str(model))
    assert load_model(str(model)) is first
    before = embed_texts(["a red apple"], str(model))
    weights = model / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[key] = tensors[key] * 0.5 + 0.01  # "retrained"
    save_file(tensors, weights)
    assert load_model(str(model)) is not first
    assert not np.allclose(embed_texts(["a red apple"], str(model)), before)
