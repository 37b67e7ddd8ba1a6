"""Vectorised MinHash signatures and LSH banding over whole batches of documents.

Two sketches, both producing a (docs x num_perm) uint32 signature whose equal-slot fraction
estimates Jaccard similarity of the documents' shingle sets:

- `oph` (default): one-permutation hashing (Li et al. 2012) with densification (
  Shrivastava & Li 2014). Each shingle is hashed once and lands in one of num_perm bins, so the cost
  is O(shingles) instead of O(shingles x num_perm); empty bins borrow the nearest filled bin's value (left or right by a
  fixed random bit per bin), which keeps the estimator consistent across documents. Built runs
  use the compiled `oph_sketch`; `oph_signatures` is the numpy reference it is tested against.
- `kperm`: classic num_perm independent hash functions (multiply-xorshift on 32-bit shingle
  hashes), evaluated in cache-sized chunks with in-place numpy ufuncs.

Band/row counts default to datasketch's own optimum (`MinHashLSH(threshold, num_perm, weights).b/.r`).

Both sketches can also return each document's shingle set (`ShingleSets`: the high 32 bits of the
seeded 64-bit shingle hashes, whose low 32 bits feed `oph`), so LSH candidates are verified by
their exact Jaccard (`lsh_roots`) instead of the signature estimate, which at 128 permutations
has a standard deviation of ~0.035 at Jaccard 0.8 and so rejects about half the pairs right at
the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasketch import MinHashLSH

from pipeline.filters import kernels
from pipeline.filters.normalize import _P, Tokens, mix64
from pipeline.filters.parallel import map_batches

EMPTY = np.uint32(0xFFFFFFFF)


def lsh_params(threshold: float, num_perm: int, bands: int | None, rows: int | None,
               fn_weight: float = 0.7) -> tuple[int, int]:
    """(bands, rows): given ones win; otherwise datasketch's optimum for the given weight of
    false negatives vs false positives (candidates are verified, so misses cost more)."""
    if bands and rows:
        if bands * rows > num_perm:
            raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
        return bands, rows
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1 - fn_weight, fn_weight))
    return lsh.b, lsh.r


def _seed_mix(seed: int) -> np.uint64:
    return mix64(np.array([seed + 0x5EED], np.uint64))[0]


@dataclass
class ShingleSets:
    """Per-document shingle sets, concatenated: document d's are values[offsets[d]:offsets[d+1]]
    (uint32, sorted, distinct)."""

    values: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len = n_docs + 1

    @classmethod
    def concat(cls, parts: list["ShingleSets"]) -> "ShingleSets":
        if not parts:
            return cls(np.zeros(0, np.uint32), np.zeros(1, np.int64))
        sizes = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + base for p, base in zip(parts, sizes)]
        return cls(np.concatenate([p.values for p in parts]), np.concatenate(offsets).astype(np.int64))

    @classmethod
    def empty(cls, n_docs: int) -> "ShingleSets":
        return cls(np.zeros(0, np.uint32), np.zeros(n_docs + 1, np.int64))


def shingle_set_values(grams: np.ndarray, seed: int) -> np.ndarray:
    """The set value of each 64-bit gram hash: the high 32 bits of its seeded hash."""
    return (mix64(grams ^ _seed_mix(seed)) >> np.uint64(32)).astype(np.uint32)


def oph_sketch(tokens: Tokens, shingle: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(signatures, has_shingles) of tokenised texts: word `shingle`-grams (a shorter text is one
    shingle), one-permutation hashed and densified in one compiled pass (`kernels.oph_signatures`,
    equal to `oph_signatures` over `ngram_hashes`)."""
    sig, has, _, _ = kernels.oph_signatures(tokens.hashes, tokens.offsets, shingle, num_perm, _seed_mix(seed),
                                            _go_right(num_perm, seed), False)
    return sig, has


def oph_sketch_sets(tokens: Tokens, shingle: int, num_perm: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, ShingleSets]:
    """`oph_sketch` plus every text's shingle set (`shingle_set_values` of its grams), from the
    same compiled pass."""
    sig, has, values, offsets = kernels.oph_signatures(tokens.hashes, tokens.offsets, shingle, num_perm,
                                                       _seed_mix(seed), _go_right(num_perm, seed), True)
    return sig, has, ShingleSets(values, offsets)


def _go_right(k: int, seed: int) -> np.ndarray:
    """The fixed random direction each empty bin borrows from when densifying."""
    return np.random.RandomState(seed + 7).randint(0, 2, k).astype(bool)


def oph_signatures(grams: np.ndarray, docs: np.ndarray, n_docs: int, num_perm: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One-permutation hashing of given gram hashes, densified by rotation (numpy; the reference
    for the compiled `oph_sketch`). Returns (signatures, has_shingles)."""
    k = num_perm
    h = mix64(grams ^ _seed_mix(seed))
    bins = (((h >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
    vals = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sig = np.full(n_docs * k, EMPTY, np.uint32)
    keys = docs.astype(np.int64) * k + bins
    np.minimum.at(sig, keys, vals)
    filled = np.zeros(n_docs * k, bool)
    filled[keys] = True
    sig, filled = sig.reshape(n_docs, k), filled.reshape(n_docs, k)
    has = filled.any(axis=1)
    return densify(sig, filled, seed), has


def densify(sig: np.ndarray, filled: np.ndarray, seed: int) -> np.ndarray:
    """Fill empty bins from the nearest filled bin, left or right by a fixed random bit per bin
    (Shrivastava & Li 2014), offset by the distance so borrowed values differ from their source."""
    n, k = sig.shape
    if filled.all() or n == 0:
        return sig
    small = np.int16 if 2 * k + 1 < np.iinfo(np.int16).max else np.int32  # half the memory traffic
    ar = np.arange(k, dtype=small)
    pos = np.where(filled, ar, small(2 * k))
    right = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1]
    first = pos.min(axis=1, keepdims=True)
    right = np.where(right >= k, first + k, right)
    pos = np.where(filled, ar, small(-k - 1))
    left = np.maximum.accumulate(pos, axis=1)
    last = pos.max(axis=1, keepdims=True)
    left = np.where(left < 0, last - k, left)
    src = np.where(_go_right(k, seed), right, left)
    dist = np.abs(src - ar).astype(np.uint32)
    borrowed = np.take_along_axis(sig, src % k, axis=1) + dist * np.uint32(0x9E3779B1)
    return np.where(filled, sig, borrowed)


def gram_sets(grams: np.ndarray, docs: np.ndarray, n_docs: int, seed: int) -> ShingleSets:
    """Shingle sets of gram hashes in document order (`ngram_hashes`)."""
    keyed = np.unique((docs.astype(np.uint64) << np.uint64(32)) | shingle_set_values(grams, seed).astype(np.uint64))
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(np.bincount((keyed >> np.uint64(32)).astype(np.int64), minlength=n_docs), out=offsets[1:])
    return ShingleSets((keyed & np.uint64(0xFFFFFFFF)).astype(np.uint32), offsets)


def kperm_signatures(grams: np.ndarray, docs: np.ndarray, n_docs: int, num_perm: int, seed: int,
                     chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """num_perm independent hash functions h_p(x) = xorshift((x ^ b_p) * a_p) on 32-bit x."""
    rng = np.random.RandomState(seed)
    a = (rng.randint(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1))[:, None]
    b = rng.randint(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)[:, None]
    x = mix64(grams ^ _seed_mix(seed))
    x = (x >> np.uint64(32)).astype(np.uint32)
    sig = np.full((n_docs, num_perm), EMPTY, np.uint32)
    has = np.zeros(n_docs, bool)
    has[docs] = True
    if not len(x):
        return sig, has
    buf = np.empty((num_perm, chunk), np.uint32)
    tmp = np.empty((num_perm, chunk), np.uint32)
    start = 0
    while start < len(x):
        # chunk boundaries never split a document
        end = min(len(x), start + chunk)
        if end < len(x):
            cut = np.searchsorted(docs[start:end], docs[end - 1], "left") + start
            end = cut if cut > start else end
        n = end - start
        h, t = buf[:, :n], tmp[:, :n]
        np.bitwise_xor(x[None, start:end], b, out=h)
        np.multiply(h, a, out=h)
        np.right_shift(h, np.uint32(15), out=t)
        np.bitwise_xor(h, t, out=h)
        d = docs[start:end]
        seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        sig[d[seg]] = np.minimum.reduceat(h, seg, axis=1).T
        start = end
    return sig, has


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs x bands) uint64 keys: a hash of each band's `rows` signature values."""
    keys = np.zeros((sig.shape[0], bands), np.uint64)
    s = sig.astype(np.uint64)
    for j in range(rows):
        keys *= _P
        keys += s[:, j:bands * rows:rows]
    for i in range(bands):
        keys[:, i] = mix64(keys[:, i] ^ np.uint64(i))
    return keys


def candidate_pairs(keys: np.ndarray, active: np.ndarray, workers: int | None = None) -> np.ndarray:
    """(m x 2) pairs (later, earlier) of active rows that share a band key (bands on `workers`
    threads).

    Within each bucket every member is paired with the bucket's first (lowest index) member and
    with its predecessor, which connects the bucket without enumerating all its pairs.
    """
    idx = np.flatnonzero(active)

    def band_pairs(band: int) -> np.ndarray:
        k = keys[idx, band]
        order = np.argsort(k, kind="stable")  # idx ascends: ties stay in row order
        ks, ids = k[order], idx[order]
        new = np.r_[True, ks[1:] != ks[:-1]]
        group = np.cumsum(new) - 1
        first = ids[np.flatnonzero(new)][group]
        member = ~new
        prev = np.r_[ids[:1], ids[:-1]]
        pred = member & (prev != first)
        return np.concatenate([np.stack([ids[member], first[member]], 1), np.stack([ids[pred], prev[pred]], 1)])

    out = map_batches(band_pairs, range(keys.shape[1]), workers)
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    if not len(pairs):
        return pairs
    n = np.int64(len(active))
    flat = np.sort(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])  # sort + mask: ~2x np.unique
    flat = flat[np.r_[True, flat[1:] != flat[:-1]]]
    return np.stack([flat // n, flat % n], 1)


def estimate_jaccard(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536,
                     workers: int | None = None) -> np.ndarray:
    """Fraction of equal signature slots for each pair (a[i], b[i])."""
    starts = range(0, len(a), chunk)
    parts = map_batches(lambda s: np.count_nonzero(sig[a[s:s + chunk]] == sig[b[s:s + chunk]], axis=1),
                        starts, workers)
    k = max(sig.shape[1], 1)
    return np.concatenate(parts) / k if parts else np.zeros(0, np.float64)


def lsh_roots(sig: np.ndarray, active: np.ndarray, bands: int, rows: int, threshold: float, verify: bool = True,
              sets: ShingleSets | None = None, has_set: np.ndarray | None = None, n_prev: int = 0,
              walk: int = 4) -> tuple[np.ndarray, dict]:
    """Each row's near-duplicate component root (its lowest row) over the verified LSH
    candidates of the active rows (`kernels.lsh_components`): exact shingle-set Jaccard for rows
    with a set (`has_set`), the signature estimate for the others (rows of earlier versions,
    whose sets are not kept). Rows below `n_prev` are never paired with each other.
    Returns (roots, counters)."""
    n = sig.shape[0]
    if sets is None:
        sets, has_set = ShingleSets.empty(n), np.zeros(n, bool)
    roots, checks, joined = kernels.lsh_components(
        np.ascontiguousarray(sig), np.asarray(active, bool), bands, rows, n_prev, sets.values, sets.offsets,
        np.asarray(has_set, bool), float(threshold), bool(verify), int(walk))
    return roots, {"candidates_checked": int(checks), "candidates_joined": int(joined)}
