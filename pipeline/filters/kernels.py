"""Compiled (numba) loops for the byte-level steps numpy cannot vectorise.

`space_token_hashes` splits texts on Unicode whitespace (Arrow's `utf8_split_whitespace` set)
and hashes each token straight from the UTF-8 buffer in one pass. Its hashes equal
`normalize._hash_strings` of each token (a polynomial over per-byte keys, finalised by
splitmix64), so it and the Arrow split path are interchangeable. `oph_signatures` shingles,
one-permutation hashes and densifies them (optionally keeping each text's sorted shingle set),
`lsh_components` buckets signatures by LSH band and joins candidates verified by their exact
set Jaccard (union-find), and `prefiltered_grams` rolls n-gram hashes for decontamination.
Kernels release the GIL, so row batches run in parallel on threads.
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
    out = np.empty(len(raw) // 2 + n_docs + 1, np.uint64)  # a text of L bytes has <= (L + 1) // 2 tokens
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
def _oph_text(token_hashes, s, e, shingle, k, seed_mix, right, top, row, filled, nxt, out,
              keep_sets, values, m, count, scratch):
    """One text's densified one-permutation signature into `out` (tokens s:e, at least one);
    with `keep_sets` its sorted distinct set values are appended at values[m:]. Returns the new m."""
    m0 = m
    row[:] = np.uint32(0xFFFFFFFF)
    filled[:] = 0
    width = shingle if e - s >= shingle else e - s  # a short text is one shingle of all its tokens
    g, power = _U(0), _U(1)
    for q in range(width):
        g += token_hashes[s + q] * power
        power *= _P
    for start in range(s, e - width + 1):
        if start > s:  # roll the gram polynomial one token on
            g = (g - token_hashes[start - 1]) * _P_INV + token_hashes[start + width - 1] * top
        h = _mix64(_mix64(g) ^ seed_mix)
        high = h >> _U(32)
        b = (high * _U(k)) >> _U(32)
        row[b] = min(row[b], np.uint32(h & _MASK32))
        filled[b] = 1
        if keep_sets:
            values[m] = np.uint32(high)
            m += 1
    if keep_sets:  # sorted while the text's values are in cache
        m = m0 + _sort_distinct(values, m0, m, count, scratch)
    n_filled = 0
    for i in range(k):  # the filled bins, in order (branch-free compaction)
        nxt[n_filled] = i
        n_filled += filled[i]
    out[:] = row
    if n_filled == k:
        return m
    # each empty bin i borrows from the filled bin after it (q) or before it (p), circularly, by
    # its fixed random direction: value + distance * golden (nxt[0] + k closes the circle)
    for j in range(n_filled):
        p = nxt[j]
        q = nxt[j + 1] if j + 1 < n_filled else nxt[0] + k
        at_q = q - k if q >= k else q
        vp, vq = _U(row[p]), _U(row[at_q])
        for i in range(p + 1, q):
            at = i - k if i >= k else i
            r = right[at] != 0
            value = vq if r else vp
            dist = (q - i) if r else (i - p)
            out[at] = np.uint32((value + _U(dist) * _GOLDEN32) & _MASK32)
    return m


@numba.njit(nogil=True, cache=True)
def oph_signatures(token_hashes, offsets, shingle, num_perm, seed_mix, go_right, keep_sets=False):
    """One-permutation MinHash of each text's word shingles, densified; equal to
    `minhash.oph_signatures(ngram_hashes(tokens, shingle, whole_if_shorter=True), ...)` on every
    text that has tokens (rows without tokens stay all-EMPTY and has=False).

    Returns (signatures, has, set values, set offsets). With `keep_sets`, text d's shingle set
    for exact Jaccard is values[set_offsets[d]:set_offsets[d + 1]]: the distinct high 32 bits of
    its seeded shingle hashes (the low 32 are the MinHash values), sorted; without, both arrays
    are empty.

    The gram polynomial is rolled one token at a time, and the bin minimum and the
    densification are branch-free selects (a filled/empty test per bin mispredicts half the
    time)."""
    n_docs, k = len(offsets) - 1, num_perm
    longest = 1
    n_values = 0
    for d in range(n_docs):
        n_tok = offsets[d + 1] - offsets[d]
        longest = max(longest, n_tok)
        if keep_sets and n_tok:
            n_values += max(n_tok - shingle + 1, 1)
    sig = np.empty((n_docs, k), np.uint32)
    has = np.zeros(n_docs, np.bool_)
    nxt, row, filled, right, top, count, scratch = _oph_buffers(k, go_right, shingle, longest, keep_sets)
    values = np.empty(n_values, np.uint32)
    set_offsets = np.zeros(n_docs + 1 if keep_sets else 0, np.int64)
    m = 0
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        if keep_sets:
            set_offsets[d] = m
        if e == s:
            sig[d, :] = np.uint32(0xFFFFFFFF)
            continue
        has[d] = True
        m = _oph_text(token_hashes, s, e, shingle, k, seed_mix, right, top, row, filled, nxt, sig[d],
                      keep_sets, values, m, count, scratch)
    if keep_sets:
        set_offsets[n_docs] = m
    return sig, has, values[:m].copy(), set_offsets


@numba.njit(nogil=True, cache=True, inline="always")
def _oph_buffers(k, go_right, shingle, longest, keep_sets):
    right = np.empty(k, np.uint8)
    for i in range(k):
        right[i] = 1 if go_right[i] else 0
    buckets = 1
    while buckets < longest:
        buckets *= 2
    top = _U(1)  # P^(shingle-1): the weight of a gram's last token
    for _ in range(shingle - 1):
        top *= _P
    return (np.empty(k, np.int64), np.empty(k, np.uint32), np.empty(k, np.uint8), right,
            top, np.empty(buckets + 1 if keep_sets else 0, np.int64),
            np.empty(longest if keep_sets else 0, np.uint32))


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


@numba.njit(nogil=True, cache=True, inline="always")
def _sort_distinct(values, s, e, count, scratch):
    """Sort values[s:e] (uniform 32-bit hashes) and move the distinct ones to the front; returns
    how many are distinct. A counting sort by the top bits into about one bucket per value,
    then one insertion pass (only values sharing a bucket are out of order). `count` and
    `scratch` are work buffers of at least (next power of 2 >= e - s) + 1 and e - s."""
    n = e - s
    bits = 0
    while (1 << bits) < n:
        bits += 1
    shift = _U(32 - bits)
    count[:(1 << bits) + 1] = 0
    for q in range(s, e):
        count[np.int64(_U(values[q]) >> shift) + 1] += 1
    for i in range(1 << bits):
        count[i + 1] += count[i]
    for q in range(s, e):
        bucket = np.int64(_U(values[q]) >> shift)
        scratch[count[bucket]] = values[q]
        count[bucket] += 1
    for q in range(1, n):
        x = scratch[q]
        c = q - 1
        while c >= 0 and scratch[c] > x:
            scratch[c + 1] = scratch[c]
            c -= 1
        scratch[c + 1] = x
    m = 0
    for q in range(n):
        if q == 0 or scratch[q] != scratch[q - 1]:
            values[s + m] = scratch[q]
            m += 1
    return m


@numba.njit(nogil=True, cache=True, inline="always")
def _set_jaccard_at_least(values, offsets, a, b, threshold):
    """Exact Jaccard of the (sorted, distinct) shingle sets of texts a and b >= threshold.

    J = I / (n1 + n2 - I) grows with the intersection I, so J >= threshold exactly when I
    reaches the smallest such integer `need`: the merge stops as soon as I reaches it, or as
    soon as what is left of the shorter remainder cannot bring I up to it."""
    s1, s2 = offsets[a], offsets[b]
    n1, n2 = offsets[a + 1] - s1, offsets[b + 1] - s2
    if n1 == 0 or n2 == 0:
        return n1 == n2
    if min(n1, n2) / max(n1, n2) < threshold:  # J <= |smaller| / |larger|
        return False
    total = n1 + n2
    need = max(int(threshold * total / (1 + threshold)) - 1, 0)
    while need / (total - need) < threshold:  # the smallest I with I / (n1 + n2 - I) >= threshold
        need += 1
    i, j = s1, s2
    e1, e2 = s1 + n1, s2 + n2
    inter = 0
    while i < e1 and j < e2:  # branch-free merge
        x, y = values[i], values[j]
        inter += x == y
        i += x <= y
        j += y <= x
        if inter >= need:
            return True
        if inter + min(e1 - i, e2 - j) < need:
            return False
    return inter >= need


@numba.njit(nogil=True, cache=True, inline="always")
def _signature_jaccard_at_least(sig, a, b, threshold):
    k = sig.shape[1]
    same = 0
    for i in range(k):
        same += sig[a, i] == sig[b, i]
    return same / max(k, 1) >= threshold


@numba.njit(nogil=True, cache=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


@numba.njit(nogil=True, cache=True)
def lsh_components(sig, active, bands, rows, n_prev, set_values, set_offsets, has_set, threshold, verify,
                   walk):
    """Connected components of the verified LSH candidate graph: each row's root, the lowest
    row of its component (a row alone is its own root).

    Band by band, the active rows are bucketed in row order by a hash of their `rows` signature
    values (one open-addressing table); each row is a candidate of its bucket's first row and of
    up to `walk` bucket members right before it. A candidate already in the row's component, or
    one that failed verification in an earlier band, is skipped; otherwise, with `verify`, the two components join only when the rows' Jaccard >=
    threshold: exact over their shingle sets (sorted, distinct) when both rows have one
    (`has_set`), estimated from the signatures otherwise. Candidates between
    two rows below `n_prev` (earlier versions) are ignored.

    Returns (roots, candidates checked, candidates joined)."""
    n = sig.shape[0]
    parent = np.arange(n)
    idx = np.flatnonzero(active)
    size = 1
    while size < 2 * len(idx) + 2:
        size *= 2
    keys = np.empty((bands, len(idx)), np.uint64)  # one pass over the signatures: every band's key
    for r in range(len(idx)):
        row = sig[idx[r]]
        for band in range(bands):
            key = _U(band)
            for j in range(band * rows, (band + 1) * rows):
                key = key * _P + _U(row[j])
            keys[band, r] = _mix64(key)
    table = np.zeros((size, 3), np.uint64)  # band key, last member + 1 (0: empty slot), first member
    before = np.empty(n, np.int64)  # the member inserted into the row's bucket before it (-1: none)
    # pairs that failed verification (one pair often shares several bands): key + 1, 0 = empty
    failed = np.zeros(size * 2 if verify else 1, np.uint64)
    failed_mask = _U(len(failed) - 1)
    n_failed = 0
    checks = 0
    joined = 0
    mask = _U(size - 1)
    for band in range(bands):
        table[:, 1] = 0
        band_keys = keys[band]
        for r in range(len(idx)):
            i = idx[r]
            key = band_keys[r]
            slot = key & mask
            while table[slot, 1] != 0 and table[slot, 0] != key:
                slot = (slot + _U(1)) & mask
            if table[slot, 1] == 0:
                table[slot, 0] = key
                table[slot, 1] = _U(i + 1)
                table[slot, 2] = _U(i)
                before[i] = -1
                continue
            other = np.int64(table[slot, 1]) - 1
            first = np.int64(table[slot, 2])
            table[slot, 1] = _U(i + 1)
            before[i] = other
            if i < n_prev:
                continue  # pairs among earlier versions change nothing
            steps = 0
            while True:
                ri, ro = _find(parent, i), _find(parent, other)
                if ri != ro:
                    ok = True
                    if verify:
                        pair = _U(i) * _U(n) + _U(other) + _U(1)
                        at = _mix64(pair) & failed_mask
                        while failed[at] != 0 and failed[at] != pair:
                            at = (at + _U(1)) & failed_mask
                        if failed[at] == pair:
                            ok = False
                        else:
                            checks += 1
                            if has_set[i] and has_set[other]:
                                ok = _set_jaccard_at_least(set_values, set_offsets, i, other, threshold)
                            else:
                                ok = _signature_jaccard_at_least(sig, i, other, threshold)
                            if not ok and 2 * n_failed < len(failed):  # at most half full
                                failed[at] = pair
                                n_failed += 1
                    else:
                        checks += 1
                    if ok:
                        joined += 1
                        if ri < ro:
                            parent[ro] = ri
                        else:
                            parent[ri] = ro
                if other == first:
                    break
                steps += 1
                other = before[other] if steps < walk else first
    roots = np.empty(n, np.int64)
    for i in range(n):
        roots[i] = _find(parent, i)
    return roots, checks, joined


@numba.njit(nogil=True, cache=True)
def signature_agreement(sig, a, b):
    """Fraction of equal signature slots of each pair (a[i], b[i])."""
    k = sig.shape[1]
    out = np.empty(len(a), np.float64)
    for p in range(len(a)):
        same = 0
        for i in range(k):
            same += sig[a[p], i] == sig[b[p], i]
        out[p] = same / max(k, 1)
    return out
