"""Text normalisation and n-gram hashing shared by dedup and decontamination.

Everything works on whole batches (Arrow compute kernels + numpy), never one Python call per
token: `normalize_texts` folds a batch of strings, `tokenize` turns it into one flat array of
64-bit token hashes plus per-document offsets, and `ngram_hashes` rolls those into n-gram hashes.
Hashes are stable across processes and library versions (fixed 64-bit arithmetic over the UTF-8
bytes), so they can be persisted in dedup indexes and benchmark caches.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.config import Strict
from pipeline.filters import kernels

# Chat-template markers removed anywhere in the text (before punctuation folding would mangle them).
TEMPLATE_MARKERS = (
    r"<\|im_start\|>\s*(system|user|assistant)?|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>"
    r"|<\|start_header_id\|>\s*\w*\s*<\|end_header_id\|>|<\|begin_of_text\|>"
    r"|\[/?inst\]|<</?sys>>|</?s>|<start_of_turn>\s*(user|model)?|<end_of_turn>"
    r"|###\s*(instruction|input|response|question|answer)\s*:?"
    r"|^\s*(human|user|assistant)\s*:"
)
# Instruction wrappers removed at the start of the (case-folded) text.
WRAPPERS = (
    r"^\s*((please\s+)?(solve|answer|complete|consider|read|try)\s+(the\s+)?following"
    r"(\s+[\w-]+){0,3}?\s*[:.]"
    r"|(question|problem|q|input|instruction|prompt|task|query)\s*\d*\s*:)\s*"
)


class NormalizeConfig(Strict):
    nfkc: bool = Field(True, description="Unicode NFKC normalisation")
    casefold: bool = Field(True, description="Lower-case (Unicode)")
    fold_punctuation: bool = Field(True, description="Replace punctuation runs by a space")
    strip_templates: bool = Field(True, description="Remove chat-template markers ([INST], <|im_start|> ...)")
    strip_wrappers: bool = Field(True, description="Remove leading 'Question:' / 'Solve the following ...:'")
    extra_wrappers: list[str] = Field(
        default_factory=list, description="More regexes (RE2 syntax) removed from the folded text")


DEFAULT_NORMALIZE = NormalizeConfig()


def _where(arr: pa.Array, rows: pa.Array, fn) -> pa.Array:
    """Apply `fn` only to the rows where `rows` is true (the costly kernels skip most texts)."""
    idx = np.flatnonzero(rows.to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return arr
    if len(idx) == len(arr):
        return fn(arr)
    return pc.replace_with_mask(arr, rows, fn(arr.take(pa.array(idx))))


def _nfkc(arr: pa.StringArray) -> pa.StringArray:
    """NFKC of non-ASCII texts: most are already normalised, which CPython's quick check sees
    at a fraction of the cost of normalising (Arrow's utf8_normalize always rewrites)."""
    return pa.array([t if t is None or unicodedata.is_normalized("NFKC", t) else unicodedata.normalize("NFKC", t)
                     for t in arr.to_pylist()], pa.string())


def normalize_texts(texts: list[str] | pa.Array, config: NormalizeConfig = DEFAULT_NORMALIZE,
                    collapse_whitespace: bool = True) -> pa.StringArray:
    """Fold a batch of texts; nulls become empty strings.

    `collapse_whitespace=False` leaves whitespace runs and edges (tokenisation splits on them
    anyway).
    """
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    arr = pc.fill_null(arr, "")
    if config.nfkc:
        arr = _where(arr, pc.invert(pc.string_is_ascii(arr)), _nfkc)
    if config.casefold:
        arr = pc.utf8_lower(arr)
    if config.strip_templates:
        arr = _where(arr, pc.match_substring_regex(arr, r"[<\[#:]"),
                     lambda a: pc.replace_substring_regex(a, TEMPLATE_MARKERS, " "))
    if config.strip_wrappers:
        arr = pc.replace_substring_regex(arr, WRAPPERS, " ", max_replacements=1)
    for pattern in config.extra_wrappers:
        arr = pc.replace_substring_regex(arr, pattern, " ")
    if config.fold_punctuation:
        arr = fold_punctuation(arr)
    if not collapse_whitespace:
        return arr
    arr = pc.replace_substring_regex(arr, r"\s\s+|[\t\n\r\f\v]", " ")
    return pc.utf8_trim_whitespace(arr)


# ASCII bytes other than letters and digits (so "_" and whitespace too) -> space; every other byte,
# including all bytes of multi-byte UTF-8 characters, maps to itself.
_ASCII_PUNCTUATION = np.arange(256, dtype=np.uint8)
_ASCII_PUNCTUATION[[b for b in range(128) if not chr(b).isalnum()]] = ord(" ")  # whitespace too
# Non-ASCII characters that are not letters, digits, marks or whitespace (RE2's \w is ASCII-only,
# so `[^\w\s]` would erase every non-Latin script).
_UNICODE_PUNCTUATION = r"[^\p{L}\p{N}\p{M}\s]+"


def fold_punctuation(arr: pa.StringArray) -> pa.StringArray:
    """Punctuation, symbols and underscores become spaces; letters, digits and marks of every
    script stay. ASCII bytes go through one table lookup over the whole batch; only rows with
    non-ASCII text run the Unicode regex."""
    if not len(arr):
        return arr
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    validity, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int32, len(arr) + 1, arr.offset * 4)
    raw = np.frombuffer(data, np.uint8, offs[-1] - offs[0], offs[0]) if data is not None else np.zeros(0, np.uint8)
    folded = pa.StringArray.from_buffers(
        len(arr), pa.py_buffer((offs - offs[0]).astype(np.int32)), pa.py_buffer(_ASCII_PUNCTUATION[raw]),
        validity.slice(0) if validity is not None and arr.offset == 0 else None)
    if validity is not None and arr.offset != 0:  # rare: a sliced array with nulls
        folded = pc.if_else(pc.is_null(arr), pa.scalar(None, pa.string()), folded)
    return _where(folded, pc.invert(pc.string_is_ascii(folded)),
                  lambda a: pc.replace_substring_regex(a, _UNICODE_PUNCTUATION, " "))


def normalize(text: str, config: NormalizeConfig = DEFAULT_NORMALIZE) -> str:
    """One text, folded exactly as `normalize_texts` folds a batch."""
    return normalize_texts([text], config)[0].as_py()


@dataclass
class Tokens:
    """A batch of documents as one flat token-hash array; doc i is hashes[offsets[i]:offsets[i+1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = n_docs + 1
    _doc: np.ndarray | None = None
    _prefix: np.ndarray | None = None

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_of_token(self) -> np.ndarray:
        if self._doc is None:
            self._doc = np.repeat(np.arange(self.n_docs), self.lengths)
        return self._doc

    def prefix(self) -> np.ndarray:
        """S[i] = sum_{j<i} h[j] * P^j (mod 2^64)."""
        if self._prefix is None:
            p, _ = _powers(len(self.hashes) + 1)
            self._prefix = np.zeros(len(self.hashes) + 1, np.uint64)
            np.cumsum(self.hashes * p[:len(self.hashes)], out=self._prefix[1:])
        return self._prefix


def _string_bytes(arr: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets from 0, UTF-8 bytes) of a string array, without copying the bytes."""
    _, offsets, data = arr.buffers()[:3]
    offs = np.frombuffer(offsets, np.int32, len(arr) + 1, arr.offset * 4).astype(np.int64)
    raw = np.frombuffer(data, np.uint8, offs[-1] - offs[0], offs[0]) if data is not None else np.zeros(0, np.uint8)
    return offs - offs[0], raw


def _hash_strings(arr: pa.StringArray) -> np.ndarray:
    """A 64-bit hash of each string: a polynomial over random per-byte keys (prefix sums mod 2^64,
    like the n-gram hashes) finalised by splitmix64; vectorised over the whole array."""
    offs, raw = _string_bytes(arr)
    p, inv = _powers(len(raw) + 1)
    prefix = np.zeros(len(raw) + 1, np.uint64)
    np.cumsum(_BYTE_KEYS[raw] * p[:len(raw)], out=prefix[1:])
    return mix64((prefix[offs[1:]] - prefix[offs[:-1]]) * inv[offs[:-1]])


def tokenize(normalized: pa.StringArray) -> Tokens:  # noqa: D401
    """Whitespace tokens of normalised texts as 64-bit hashes, in one compiled pass over the
    UTF-8 bytes (runs of whitespace separate, they do not make empty tokens). The hashes are
    those of `_hash_strings` on each token (`split_tokens` is the same split in Arrow)."""
    arr = normalized.combine_chunks() if isinstance(normalized, pa.ChunkedArray) else normalized
    offs, raw = _string_bytes(pc.fill_null(arr, ""))
    hashes, offsets = kernels.space_token_hashes(raw, offs, _BYTE_KEYS)
    return Tokens(hashes, offsets)


def split_tokens(normalized: pa.StringArray) -> Tokens:
    """`tokenize` through Arrow's whitespace split, hashing each distinct token once (the
    reference the compiled pass is tested against)."""
    arr = normalized.combine_chunks() if isinstance(normalized, pa.ChunkedArray) else normalized
    lists = pc.utf8_split_whitespace(pc.fill_null(arr, ""))
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    flat = lists.flatten()
    if len(flat) == 0:
        return Tokens(np.zeros(0, np.uint64), offsets)
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary
    codes = encoded.indices.to_numpy()
    empty = np.flatnonzero(pc.equal(pc.utf8_length(vocab), 0).to_numpy(zero_copy_only=False))
    if len(empty):  # "a  b" and "" split into "" tokens: drop them
        keep = codes != empty[0]
        codes = codes[keep]
        offsets = np.r_[0, np.cumsum(keep)][offsets]
    return Tokens(_hash_strings(vocab)[codes], offsets)


_P = np.uint64(0x100000001B3)  # FNV prime: base of the n-gram polynomial (odd, so invertible)
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_POW: dict[str, tuple[np.ndarray, np.ndarray]] = {"p": (np.ones(1, np.uint64), np.ones(1, np.uint64))}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i (mod 2^64) for i < n, grown on demand (one atomic swap: threads share it)."""
    p, inv = _POW["p"]
    if len(p) < n:
        size = max(n, min(2 * len(p), 1 << 23))
        with np.errstate(over="ignore"):
            p = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _P, np.uint64)], dtype=np.uint64)
            inv = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _P_INV, np.uint64)], dtype=np.uint64)
        _POW["p"] = (p, inv)
    return p[:n], inv[:n]


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (on a copy): spreads polynomial hashes over all 64 bits."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


_BYTE_KEYS = mix64(np.arange(1, 257, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _span_hashes(tokens: Tokens, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """mix64(sum_k h[start+k] * P^k) for token spans [start, end), via prefix sums mod 2^64."""
    prefix = tokens.prefix()
    _, inv = _powers(len(tokens.hashes) + 1)
    return mix64((prefix[ends] - prefix[starts]) * inv[starts])


def ngram_hashes(tokens: Tokens, n: int, whole_if_shorter: bool = False, positions: bool = False
                 ) -> tuple[np.ndarray, ...]:
    """(hashes, doc index) of every word n-gram, in document order.

    With `whole_if_shorter`, a document of 1 <= L < n tokens contributes one gram: the hash of
    all its L tokens, which equals its L-gram hash (so short texts can be matched as L-grams).
    With `positions`, also each gram's first-token position within its document.
    """
    offsets = tokens.offsets
    lengths = tokens.lengths
    doc_of_token = tokens.doc_of_token()
    if len(tokens.hashes) >= n:
        candidates = np.arange(len(tokens.hashes) - n + 1)
        ends = offsets[1:][doc_of_token[candidates]]
        starts = candidates[candidates + n <= ends]
        grams = _span_hashes(tokens, starts, starts + n)
        docs = doc_of_token[starts]
        pos = starts - offsets[docs] if positions or whole_if_shorter else None
    else:
        grams, docs, pos = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if whole_if_shorter:
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        if len(short):
            extra = _span_hashes(tokens, offsets[short], offsets[short + 1])
            grams = np.concatenate([grams, extra])
            docs = np.concatenate([docs, short])
            pos = np.concatenate([pos, np.zeros(len(short), np.int64)])
            order = np.argsort(docs, kind="stable")
            grams, docs, pos = grams[order], docs[order], pos[order]
    return (grams, docs, pos) if positions else (grams, docs)


def messages_text(column: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """Join the `content` of every message of a list<struct<role, content>> column with newlines."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(column.cast(pa.string()), "")
    if pa.types.is_struct(column.type):  # a single message / response struct
        return pc.fill_null(column.field("content"), "")
    contents = pc.fill_null(column.flatten().field("content"), "")
    offsets = column.offsets
    if column.offset or column.null_count:
        column = pc.fill_null(column, pa.scalar([], column.type))
        offsets = column.offsets
        contents = pc.fill_null(column.flatten().field("content"), "")
    offsets = pc.subtract(offsets, offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n")
    return pc.fill_null(joined, "")


def table_texts(table: pa.Table, columns: list[str]) -> pa.StringArray:
    """One text per row: the named message / string columns joined with newlines."""
    parts = [messages_text(table.column(c)) for c in columns]
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, "\n")
