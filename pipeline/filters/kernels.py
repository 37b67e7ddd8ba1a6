"""Compiled (numba) loops for the byte-level steps numpy cannot vectorise.

`space_token_hashes` splits texts on Unicode whitespace (Arrow's `utf8_split_whitespace` set)
and hashes each token straight from the UTF-8 buffer in one pass. Its hashes equal
`normalize._hash_strings` of each token (a polynomial over per-byte keys, finalised by
splitmix64), so it and the Arrow split path are interchangeable. Kernels release the GIL, so
row batches run in parallel on threads.
"""

from __future__ import annotations

import numba
import numpy as np

_U = np.uint64
_P = _U(0x100000001B3)  # the polynomial base of normalize._P
_P_INV = _U(pow(0x100000001B3, -1, 1 << 64))
_C1, _C2 = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)
_S27, _S30, _S31 = _U(27), _U(30), _U(31)


@numba.njit(nogil=True, cache=True, inline="always")
def _mix64(z):
    z = z ^ (z >> _S30)
    z = z * _C1
    z = z ^ (z >> _S27)
    z = z * _C2
    return z ^ (z >> _S31)


# byte class: 0 part of a token, 1 ASCII whitespace (9-13, 28-32), 2 lead byte of a multi-byte
# character that may be whitespace
_CLASS = np.zeros(256, np.uint8)
_CLASS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = 1
_CLASS[[0xC2, 0xE1, 0xE2, 0xE3]] = 2


@numba.njit(nogil=True, cache=True, inline="always")
def _wide_space_bytes(raw, j, end):
    """Byte length of the multi-byte whitespace at raw[j] (0: none): U+0085, U+00A0, U+1680,
    U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000."""
    b = raw[j]
    if b == 0xC2:
        return 2 if j + 1 < end and (raw[j + 1] == 0x85 or raw[j + 1] == 0xA0) else 0
    if j + 2 >= end:
        return 0
    b1, b2 = raw[j + 1], raw[j + 2]
    if b == 0xE1:
        return 3 if b1 == 0x9A and b2 == 0x80 else 0
    if b == 0xE3:
        return 3 if b1 == 0x80 and b2 == 0x80 else 0
    if b1 == 0x80:
        return 3 if (b2 <= 0x8A or b2 == 0xA8 or b2 == 0xA9 or b2 == 0xAF) else 0
    return 3 if b1 == 0x81 and b2 == 0x9F else 0


@numba.njit(nogil=True, cache=True)
def space_token_hashes(raw, offsets, byte_keys, byte_class=_CLASS):
    """(token hashes, per-text token offsets) of the texts raw[offsets[d]:offsets[d+1]]."""
    n_docs = len(offsets) - 1
    out = np.empty(len(raw) // 2 + 1, np.uint64)
    doc_offsets = np.empty(n_docs + 1, np.int64)
    t = 0
    for d in range(n_docs):
        doc_offsets[d] = t
        h, power, inside = _U(0), _U(1), False
        j, end = offsets[d], offsets[d + 1]
        while j < end:
            c = byte_class[raw[j]]
            width = 0 if c == 0 else (1 if c == 1 else _wide_space_bytes(raw, j, end))
            if width:
                if inside:
                    out[t] = _mix64(h)
                    t += 1
                    h, power, inside = _U(0), _U(1), False
                j += width
            else:
                h += byte_keys[raw[j]] * power
                power *= _P
                inside = True
                j += 1
        if inside:
            out[t] = _mix64(h)
            t += 1
    doc_offsets[n_docs] = t
    return out[:t], doc_offsets


_MASK32 = _U(0xFFFFFFFF)
_GOLDEN32 = _U(0x9E3779B1)


@numba.njit(nogil=True, cache=True, inline="always")
def _gram_hash(token_hashes, start, width):
    """normalize._span_hashes of one span: mix64(sum_q h[start + q] * P^q)."""
    g, power = _U(0), _U(1)
    for q in range(width):
        g += token_hashes[start + q] * power
        power *= _P
    return _mix64(g)


@numba.njit(nogil=True, cache=True)
def oph_signatures(token_hashes, offsets, shingle, num_perm, seed_mix, go_right):
    """One-permutation MinHash of each text's word shingles, densified; equal to
    `minhash.oph_signatures(ngram_hashes(tokens, shingle, whole_if_shorter=True), ...)` on every
    text that has tokens (rows without tokens stay all-EMPTY and has=False)."""
    n_docs, k = len(offsets) - 1, num_perm
    sig = np.full((n_docs, k), np.uint32(0xFFFFFFFF), np.uint32)
    has = np.zeros(n_docs, np.bool_)
    filled = np.zeros(k, np.bool_)
    nxt = np.empty(k, np.int64)
    prv = np.empty(k, np.int64)
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        if e == s:
            continue
        has[d] = True
        filled[:] = False
        row = sig[d]
        width = shingle if e - s >= shingle else e - s  # a short text is one shingle of all its tokens
        for start in range(s, e - width + 1):
            h = _mix64(_gram_hash(token_hashes, start, width) ^ seed_mix)
            b = ((h >> _U(32)) * _U(k)) >> _U(32)
            v = np.uint32(h & _MASK32)
            if v < row[b]:
                row[b] = v
            filled[b] = True
        first, last, n_filled = -1, -1, 0
        for i in range(k):
            if filled[i]:
                last = i
                n_filled += 1
                if first < 0:
                    first = i
        if n_filled == k:
            continue
        cur = first + k
        for i in range(k - 1, -1, -1):
            if filled[i]:
                cur = i
            nxt[i] = cur
        cur = last - k
        for i in range(k):
            if filled[i]:
                cur = i
            prv[i] = cur
        for i in range(k):
            if not filled[i]:
                src = nxt[i] if go_right[i] else prv[i]
                dist = src - i if src > i else i - src
                value = (_U(row[(src % k + k) % k]) + _U(dist) * _GOLDEN32) & _MASK32
                row[i] = np.uint32(value)
    return sig, has


@numba.njit(nogil=True, cache=True)
def prefiltered_grams(token_hashes, offsets, rows, n, bitmap, mask):
    """(hashes, text index) of the word n-grams of texts `rows` whose hash has its bit set in the
    `bitmap` bitset (bit = hash & mask), in text order.

    Hashing and the bitset test are separate loops: the test's cache misses then overlap
    (one fused loop waits out each miss and is ~7x slower)."""
    total = 0
    for r in rows:
        total += max(offsets[r + 1] - offsets[r] - n + 1, 0)
    grams = np.empty(total, np.uint64)
    docs = np.empty(total, np.int64)
    top = _U(1)  # P^(n-1): the weight of a gram's last token
    for _ in range(n - 1):
        top *= _P
    m = 0
    for r in rows:
        s, e = offsets[r], offsets[r + 1]
        if e - s < n:
            continue
        g = _U(0)  # the unmixed polynomial of the current gram, rolled one token at a time
        power = _U(1)
        for q in range(n):
            g += token_hashes[s + q] * power
            power *= _P
        for start in range(s, e - n + 1):
            if start > s:
                g = (g - token_hashes[start - 1]) * _P_INV + token_hashes[start + n - 1] * top
            grams[m] = _mix64(g)
            docs[m] = r
            m += 1
    keep = np.empty(m, np.bool_)
    for i in range(m):
        pos = grams[i] & mask
        keep[i] = (bitmap[pos >> _U(3)] >> (pos & _U(7))) & 1
    return grams[:m][keep], docs[:m][keep]
