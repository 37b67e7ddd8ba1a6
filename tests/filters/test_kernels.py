"""The compiled passes equal their references: the token pass splits and hashes like Arrow's
whitespace split + per-token hash, the MinHash pass like the numpy sketch over n-gram hashes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.filters import kernels
from pipeline.filters.minhash import gram_sets, lsh_roots, oph_signatures, oph_sketch, oph_sketch_sets
from pipeline.filters.normalize import _hash_strings, ngram_hashes, normalize_texts, split_tokens, tokenize
from tests.filters.test_dedup import real_prompts


def assert_same_tokens(arr: pa.StringArray) -> None:
    fast, ref = tokenize(arr), split_tokens(arr)
    assert np.array_equal(fast.offsets, ref.offsets)
    assert np.array_equal(fast.hashes, ref.hashes)


def test_every_code_point_splits_like_arrow():
    points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{chr(c)}b {chr(c)}{chr(c)}x{chr(c)}" for c in points]
    assert_same_tokens(pa.array(texts, pa.string()))


def test_real_texts_raw_and_normalised_slices_and_nulls(real_data):
    texts = real_prompts(real_data)[:3000]
    raw = pa.array(texts + [None, "", "   ", "\u3000tab\there\u00a0nbsp\u2028", "ünïcödé wörds 中文 日本語"])
    for arr in (raw, raw.slice(1234, 900), normalize_texts(raw), normalize_texts(raw).slice(7)):
        assert_same_tokens(arr)


def test_token_hash_is_the_hash_of_the_token_text():
    tokens = tokenize(pa.array(["alpha  beta\ngamma", "beta"]))
    assert list(tokens.offsets) == [0, 3, 4]
    expected = _hash_strings(pa.array(["alpha", "beta", "gamma", "beta"]))
    assert np.array_equal(tokens.hashes, expected)


@pytest.mark.parametrize("shingle,num_perm,seed", [(3, 128, 1), (5, 64, 42), (1, 256, 0)])
def test_compiled_minhash_equals_the_numpy_reference(real_data, shingle, num_perm, seed):
    texts = real_prompts(real_data)[:2000] + ["", "one", "two words", "   "]
    tokens = tokenize(normalize_texts(texts))
    sig, has = oph_sketch(tokens, shingle, num_perm, seed)
    grams, docs = ngram_hashes(tokens, shingle, whole_if_shorter=True)
    ref, ref_has = oph_signatures(grams, docs, len(texts), num_perm, seed)
    assert np.array_equal(has, ref_has) and not has[-4] and not has[-1] and has[-3]
    assert np.array_equal(sig[has], ref[has])


@pytest.mark.parametrize("n", [1, 6, 8, 13])
def test_prefiltered_grams_are_the_ngram_hashes_that_pass_the_bitset(real_data, n):
    tokens = tokenize(normalize_texts(real_prompts(real_data)[:1500] + ["", "short text"]))
    grams, docs = ngram_hashes(tokens, n)
    rows = np.arange(tokens.n_docs)
    everything = np.full(1, 0xFF, np.uint8)  # one byte, all bits set: every gram passes
    got, got_docs = kernels.prefiltered_grams(tokens.hashes, tokens.offsets, rows, n, everything, np.uint64(7))
    assert np.array_equal(got, grams) and np.array_equal(got_docs, docs)
    # a real bitset of half the grams: exactly those pass, and only over the chosen rows
    mask = (1 << 20) - 1
    bitmap = np.zeros((1 << 20) // 8, np.uint8)
    chosen = grams[::2] & np.uint64(mask)
    np.bitwise_or.at(bitmap, (chosen >> np.uint64(3)).astype(np.int64), (1 << (chosen & np.uint64(7))).astype(np.uint8))
    odd = rows[1::2]
    got, got_docs = kernels.prefiltered_grams(tokens.hashes, tokens.offsets, odd, n, bitmap, np.uint64(mask))
    pos = grams & np.uint64(mask)
    passes = ((bitmap[(pos >> np.uint64(3)).astype(np.int64)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1) == 1
    keep = passes & (docs % 2 == 1)
    assert np.array_equal(got, grams[keep]) and np.array_equal(got_docs, docs[keep])


def test_single_character_tokens_fill_the_token_buffer():
    """Texts of one-byte tokens hold (L + 1) / 2 tokens each: more than half the batch's bytes."""
    texts = ["a b c d e f g", "x", "y z", "p q r s t u v w", "k"] * 50
    assert_same_tokens(pa.array(texts, pa.string()))


@pytest.mark.parametrize("shingle", [1, 3, 5])
def test_shingle_sets_come_with_the_same_signatures(real_data, shingle):
    texts = real_prompts(real_data)[:1500] + ["", "one", "two words", "a b a b a b"]
    tokens = tokenize(normalize_texts(texts))
    sig, has, sets = oph_sketch_sets(tokens, shingle, 128, 1)
    ref_sig, ref_has = oph_sketch(tokens, shingle, 128, 1)
    assert np.array_equal(has, ref_has) and np.array_equal(sig, ref_sig)
    grams, docs = ngram_hashes(tokens, shingle, whole_if_shorter=True)
    ref = gram_sets(grams, docs, len(texts), 1)
    assert np.array_equal(sets.offsets, ref.offsets) and np.array_equal(sets.values, ref.values)


def test_lsh_roots_join_exactly_the_pairs_at_the_threshold():
    """Verification by the exact set Jaccard, whatever the signatures say (all equal here):
    10-value sets sharing 8 (J = 8/12) or 9 (J = 9/12) with row 0 stay apart at 0.8, the one
    sharing 9 joins at 0.75, an equal set joins; roots are the lowest row; rows of earlier
    versions (below n_prev) are never joined together;
    a row without a set is verified by the signature estimate."""
    from pipeline.filters.minhash import ShingleSets

    base = np.arange(10, dtype=np.uint32)
    rows = [base, np.r_[base[:8], [100, 101]], np.r_[base[:9], [200, 201]], base]  # sorted, distinct
    sets = ShingleSets(np.concatenate(rows).astype(np.uint32), np.cumsum([0] + [len(r) for r in rows]))
    sig = np.zeros((4, 128), np.uint32)  # identical signatures: every pair is a candidate
    active = np.ones(4, bool)
    roots, counters = lsh_roots(sig, active, 16, 8, 0.8, True, sets, active)
    assert roots.tolist() == [0, 1, 2, 0]  # 2 vs 0: 9/12 = 0.75 < 0.8; 3 is 0 again
    roots, _ = lsh_roots(sig, active, 16, 8, 0.75, True, sets, active)
    assert roots.tolist() == [0, 1, 0, 0]
    roots, _ = lsh_roots(sig, active, 16, 8, 0.8, False, sets, active)  # raw candidates
    assert roots.tolist() == [0, 0, 0, 0]
    roots, counters = lsh_roots(sig, active, 16, 8, 0.8, False, sets, active, n_prev=4)
    assert roots.tolist() == [0, 1, 2, 3] and counters["candidates_checked"] == 0  # all earlier versions
    roots, _ = lsh_roots(sig, active, 16, 8, 0.8, True, sets, np.array([True, True, True, False]))
    assert roots.tolist() == [0, 0, 0, 0]  # row 3 has no set: the estimate (equal signatures) joins it
