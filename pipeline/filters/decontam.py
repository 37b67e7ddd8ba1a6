"""Benchmark decontamination: n-gram overlap (tier 1) and embedding neighbours (tier 2).

The benchmark registry (`data/benchmarks.yaml`) lists test sets and the fields holding their
text. `build_benchmark_index` loads them once per stage run into sorted n-gram hash tables (and,
with tier 2 on, a FAISS index of item embeddings, cached on disk by content).

Tier 1: a row is contaminated by a benchmark item when at least `min_overlap` of the item's
tokens are covered by item n-grams that also occur in the row's normalised text (for any
configured n; items shorter than the smallest n count as one n-gram of their own length).
Measuring coverage of the *item* means a few changed words only uncover the words themselves
(not every n-gram through them), and a short item wrapped in a long instruction, re-cased, re-spaced or split into short lines
is still caught. Tier 2: rows that pass tier 1 are embedded and dropped when their nearest
benchmark item has cosine >= `embedding.threshold` (paraphrases).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import Field

from pipeline.atomic import replace_file
from pipeline.filters import kernels
from pipeline.filters.embed import DEFAULT_MODEL, embed_texts, flat_ip_index
from pipeline.filters.normalize import (NormalizeConfig, Tokens, ngram_hashes, normalize_texts, table_texts,
                                        tokenize)
from pipeline.filters.parallel import map_batches, workers_field
from pipeline.ids import file_sha256
from pipeline.config import Strict
from pipeline.shards import DroppedWriter
from pipeline.stats import StageStats

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO / "data" / "benchmarks.yaml"
REPORT_FILE = "decontam_report.json"


class BenchmarkSpec(Strict):
    name: str
    file: str
    format: Literal["jsonl", "json", "json_examples", "csv"] = "jsonl"
    id_field: str | None = Field(None, description="Item id field (row index when absent)")
    text_fields: list[str] = Field(min_length=1)


class EmbeddingTier(Strict):
    enabled: bool = Field(False, description="Tier 2: embed every row that passes tier 1 (costly on CPU)")
    model: str = DEFAULT_MODEL
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine to the nearest benchmark item")
    batch_size: int = Field(256, ge=1)


class DecontamConfig(Strict):
    registry: str | None = Field(None, description="Benchmark registry YAML (default data/benchmarks.yaml)")
    benchmarks_root: str | None = Field(None, description="Overrides the registry's root")
    benchmarks: list[str] | None = Field(None, description="Only these registry names (default: all)")
    id_column: str = "id"
    prompt_column: str = "prompt"
    include_responses: bool = False
    response_columns: list[str] = Field(default_factory=lambda: ["responses"])
    normalize: NormalizeConfig = NormalizeConfig()
    ngram_sizes: list[int] = Field(default_factory=lambda: [8, 13], min_length=1)
    min_overlap: float = Field(0.4, gt=0, le=1, description="Fraction of an item's tokens covered by "
                               "its n-grams found in a row")
    min_item_tokens: int = Field(6, ge=1, description="Shorter items are left to tier 2")
    embedding: EmbeddingTier = EmbeddingTier()
    cache_dir: str | None = Field(None, description="Where benchmark embeddings are cached")
    batch_rows: int = Field(8192, ge=1)
    workers: int | None = workers_field()

    @property
    def text_columns(self) -> list[str]:
        return [self.prompt_column] + (self.response_columns if self.include_responses else [])


@dataclass
class Item:
    benchmark: str
    item_id: str
    text: str


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _records(path: Path, fmt: str) -> list[dict]:
    with _open_text(path) as f:
        if fmt == "jsonl":
            return [json.loads(line) for line in f if line.strip()]
        if fmt == "csv":
            return list(csv.DictReader(io.StringIO(f.read().lstrip("\ufeff"))))
        data = json.load(f)
        return data["examples"] if fmt == "json_examples" else data


def load_registry(path: str | Path | None = None, root: str | Path | None = None,
                  names: list[str] | None = None) -> tuple[Path, list[BenchmarkSpec]]:
    """(benchmarks root, specs) from a registry YAML."""
    path = Path(path) if path else DEFAULT_REGISTRY
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs = [BenchmarkSpec.model_validate(b) for b in data.get("benchmarks", [])]
    if names is not None:
        unknown = set(names) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"{path}: unknown benchmarks {sorted(unknown)}")
        specs = [s for s in specs if s.name in names]
    base = Path(root) if root else (path.parent / data.get("root", ".")).resolve()
    return base, specs


def benchmarks_digest(root: Path, specs: list[BenchmarkSpec], *extra: str) -> str:
    """sha256 over each benchmark's spec and file bytes (and `extra`): changes when any of them does."""
    fp = hashlib.sha256()
    for spec in specs:
        fp.update(spec.model_dump_json().encode())
        fp.update(file_sha256(root / spec.file).encode())
    for text in extra:
        fp.update(text.encode())
    return fp.hexdigest()


def load_items(root: Path, specs: list[BenchmarkSpec]) -> list[Item]:
    items = []
    for spec in specs:
        for n, rec in enumerate(_records(root / spec.file, spec.format)):
            item_id = str(rec.get(spec.id_field, n)) if spec.id_field else str(n)
            for fld in spec.text_fields:
                value = rec.get(fld)
                if isinstance(value, list):
                    items += [Item(spec.name, f"{item_id}/{fld}/{t}", str(v)) for t, v in enumerate(value) if v]
                elif value:
                    suffix = f"/{fld}" if len(spec.text_fields) > 1 else ""
                    items.append(Item(spec.name, item_id + suffix, str(value)))
    return items


@dataclass
class GramTable:
    """N-gram hashes of benchmark items of one size, grouped by distinct hash.

    The entries of distinct hash `unique[u]` (the items holding that gram, and where) are
    `items[starts[u]: starts[u] + counts[u]]` and the same slice of `positions`.
    """

    n: int
    unique: np.ndarray  # uint64, sorted distinct gram hashes
    starts: np.ndarray  # int64: first entry of each distinct hash
    counts: np.ndarray  # int64: entries of each distinct hash
    items: np.ndarray  # int64, entries sorted by (hash, item, position)
    positions: np.ndarray  # int64: first-token position of the gram in its item
    lengths: np.ndarray  # per item: tokens covered by its grams of this size (0 = not indexed)

    def lookup(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into `grams` found in the table, their distinct-hash numbers)."""
        if not len(self.unique) or not len(grams):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        u = np.minimum(np.searchsorted(self.unique, grams), len(self.unique) - 1)
        found = np.flatnonzero(self.unique[u] == grams)
        return found, u[found]


@dataclass
class BenchmarkIndex:
    items: list[Item]
    tables: dict[int, GramTable]
    bitmap: np.ndarray  # prefilter bitset: bit (hash & mask) set for every indexed gram
    mask: int
    too_short: int
    embeddings: np.ndarray | None = None
    faiss_index: object = None
    fingerprint: str = ""

    def candidate_grams(self, tokens: Tokens, n: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, row) of the n-grams of `rows` (all when None) that pass the bitset prefilter
        (one compiled pass)."""
        rows = np.arange(tokens.n_docs) if rows is None else rows
        return kernels.prefiltered_grams(tokens.hashes, tokens.offsets, rows.astype(np.int64), n, self.bitmap,
                                         np.uint64(self.mask))

    def per_benchmark(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for it in self.items:
            out[it.benchmark] += 1
        return dict(out)


def _gram_table(n: int, grams: np.ndarray, docs: np.ndarray, pos: np.ndarray, lengths: np.ndarray
                ) -> GramTable:
    order = np.lexsort((pos, docs, grams))
    grams = grams[order]
    covered = np.zeros(len(lengths), np.int64)
    has = np.unique(docs)
    covered[has] = lengths[has]
    unique, starts, counts = np.unique(grams, return_index=True, return_counts=True)
    return GramTable(n, unique, starts.astype(np.int64), counts.astype(np.int64),
                     docs[order].astype(np.int64), pos[order].astype(np.int64), covered)


def build_benchmark_index(config: DecontamConfig = DecontamConfig(), bitmap_bits: int = 27
                          ) -> BenchmarkIndex:
    """Load the registry's benchmarks once; cache tier-2 item embeddings under `cache_dir`."""
    root, specs = load_registry(config.registry, config.benchmarks_root, config.benchmarks)
    items = load_items(root, specs)
    norm = normalize_texts([it.text for it in items], config.normalize)
    tokens = tokenize(norm)
    lengths = tokens.lengths
    smallest = min(config.ngram_sizes)
    tables: dict[int, GramTable] = {}
    for n in sorted(set(config.ngram_sizes)):
        tables[n] = _gram_table(n, *ngram_hashes(tokens, n, positions=True), lengths)
    short = (lengths >= config.min_item_tokens) & (lengths < smallest)
    for length in np.unique(lengths[short]).tolist():
        grams, docs, pos = ngram_hashes(tokens, length, whole_if_shorter=True, positions=True)
        keep = lengths[docs] == length
        tables[length] = _gram_table(length, grams[keep], docs[keep], pos[keep], lengths)
    mask = (1 << bitmap_bits) - 1
    bitmap = np.zeros((1 << bitmap_bits) // 8, np.uint8)  # a bitset: 16 MiB for 2^27 bits
    for t in tables.values():
        pos = (t.unique & np.uint64(mask)).astype(np.int64)
        np.bitwise_or.at(bitmap, pos >> 3, (1 << (pos & 7)).astype(np.uint8))
    index = BenchmarkIndex(items, tables, bitmap, mask, int((lengths < config.min_item_tokens).sum()),
                           fingerprint=benchmarks_digest(root, specs, config.normalize.model_dump_json())[:16])
    if config.embedding.enabled:
        index.embeddings = _item_embeddings(index, config)
        index.faiss_index = flat_ip_index(index.embeddings.shape[1])
        index.faiss_index.add(index.embeddings)
    return index


def _item_embeddings(index: BenchmarkIndex, config: DecontamConfig) -> np.ndarray:
    emb = config.embedding
    path = None
    if config.cache_dir:
        key = hashlib.sha256(f"{index.fingerprint}:{emb.model}".encode()).hexdigest()[:16]
        path = Path(config.cache_dir) / f"benchmark-embeddings-{key}.npy"
        if path.exists():
            return np.load(path)
    vectors = embed_texts([it.text for it in index.items], emb.model, emb.batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        replace_file(path, buffer.getvalue())
    return vectors


@dataclass(slots=True)
class Hit:
    row: int
    item: int
    tier: str  # ngram | embedding
    score: float  # overlap fraction or cosine


NO_HITS: tuple[Hit, ...] = ()  # the row of every clean text (millions of empty lists keep the GC busy)


def _coverage(table: GramTable, rows: np.ndarray, u: np.ndarray, n_items: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(row * n_items + item, covered fraction of the item) for every (row, item) sharing one of
    the found grams (`rows`, `u`: at least one): the tokens covered by the union of the item's
    matched grams [pos, pos + n)."""
    reps = table.counts[u]
    total = int(reps.sum())
    entry = np.repeat(table.starts[u] - np.cumsum(reps) + reps, reps) + np.arange(total)
    key = np.repeat(rows, reps) * n_items + table.items[entry]
    pos = table.positions[entry]
    pos_bits = max(int(pos.max()).bit_length(), 1)
    if int(key.max(initial=0)).bit_length() + pos_bits <= 62:  # one integer sort
        packed = np.sort((key << pos_bits) | pos)
        key, pos = packed >> pos_bits, packed & ((1 << pos_bits) - 1)
    else:
        order = np.lexsort((pos, key))
        key, pos = key[order], pos[order]
    # a repeated (row, item, position) adds nothing; a gap >= n adds a whole gram
    same = np.r_[key[1:] == key[:-1], False]
    step = np.where(same, np.minimum(np.r_[pos[1:] - pos[:-1], 0], table.n), table.n)
    step = np.minimum(step, table.lengths[key % n_items])
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # key is sorted: no np.unique sort
    ukey = key[first]
    return ukey, np.add.reduceat(step, first) / table.lengths[ukey % n_items]


def ngram_hits(texts: pa.StringArray | list[str], index: BenchmarkIndex, config: DecontamConfig,
               row_offset: int = 0) -> list[Sequence[Hit]]:
    """Tier 1 for a batch of raw texts: per row, every item whose overlap >= min_overlap, best
    first (hit rows are numbered from `row_offset`).

    Only the smallest configured gram size is matched, with the tables of short items (below
    it): a row holding an item's larger n-gram holds all its smaller grams inside it, and every
    item indexed at a larger size is indexed at the smaller one too, so larger sizes never
    cover more of an item (they used to run over the rows that matched the smaller size and
    never changed a score). A (row, item) found in several tables keeps its best overlap."""
    norm = normalize_texts(texts, config.normalize, collapse_whitespace=False)
    tokens = tokenize(norm)
    n_items = len(index.items)
    keys: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    smallest = min(config.ngram_sizes)
    for n in [n for n in index.tables if n < smallest] + [smallest]:
        table = index.tables[n]
        grams, docs = index.candidate_grams(tokens, n, None)
        found, u = table.lookup(grams)
        rows = docs[found]
        if not len(rows):
            continue
        ukey, frac = _coverage(table, rows, u, n_items)
        sel = frac >= config.min_overlap
        keys.append(ukey[sel])
        scores.append(np.minimum(frac[sel], 1.0))
    out: list[Sequence[Hit]] = [NO_HITS] * len(norm)  # one shared empty row: no per-row objects
    if not keys or not sum(len(k) for k in keys):
        return out
    key, score = np.concatenate(keys), np.concatenate(scores)
    order = np.lexsort((-score, key))  # per (row, item): the best size first
    key, score = key[order], score[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, score = key[first], score[first]
    row, item = key // n_items, key % n_items
    order = np.lexsort((item, -score, row))  # per row: best overlap first, then item order
    row, item, score = row[order].tolist(), item[order].tolist(), score[order].tolist()
    starts = [0] + [q for q in range(1, len(row)) if row[q] != row[q - 1]] + [len(row)]
    for a, b in zip(starts[:-1], starts[1:]):
        r = row[a]
        out[r] = [Hit(r + row_offset, item[q], "ngram", score[q]) for q in range(a, b)]
    return out


def embedding_hits(texts: list[str], index: BenchmarkIndex, config: DecontamConfig) -> list[Sequence[Hit]]:
    """Tier 2: the nearest benchmark item of each text, when its cosine >= threshold."""
    out: list[list[Hit]] = [[] for _ in texts]
    if index.faiss_index is None or not texts:
        return out
    emb = embed_texts(texts, config.embedding.model, config.embedding.batch_size)
    dist, idx = index.faiss_index.search(emb, 1)
    for r in range(len(texts)):
        if idx[r, 0] >= 0 and dist[r, 0] >= config.embedding.threshold:
            out[r].append(Hit(r, int(idx[r, 0]), "embedding", float(dist[r, 0])))
    return out


def match_texts(texts: pa.StringArray | list[str], index: BenchmarkIndex, config: DecontamConfig
                ) -> list[Sequence[Hit]]:
    """Both tiers over any number of texts: tier 1 in `batch_rows` batches on `workers` threads,
    then tier 2 over the rows tier 1 did not flag. Hit rows index into `texts`."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    starts = range(0, len(arr), config.batch_rows)
    hits: list[Sequence[Hit]] = [NO_HITS] * len(arr)
    for start, batch in zip(starts, map_batches(
            lambda s: ngram_hits(arr.slice(s, config.batch_rows), index, config, s), starts, config.workers)):
        for r, row in enumerate(batch):
            if row:
                hits[start + r] = row
    if config.embedding.enabled:
        rest = [r for r, h in enumerate(hits) if not h]
        for s in range(0, len(rest), config.batch_rows):
            chunk = rest[s:s + config.batch_rows]
            found = embedding_hits(arr.take(pa.array(chunk, pa.int64())).to_pylist(), index, config)
            for r, h in zip(chunk, found):
                hits[r] = [Hit(r, x.item, x.tier, x.score) for x in h]
    return hits


def decontaminate_shard(in_shard: Path, out_dir: Path, config: DecontamConfig,
                        index: BenchmarkIndex, position: int = 0, *, stage: str) -> StageStats:
    """Write `part-<position>.parquet` without contaminated rows, drops, and `hits-<position>.json`.

    Output names come from the shard's position in the build, never from its file name: shards of
    different inputs share names (every ingest directory starts at part-00000)."""
    in_shard, out_dir = Path(in_shard), Path(out_dir)
    name = f"{position:05d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(in_shard)
    ids = table.column(config.id_column).to_pylist()
    stats = StageStats(stage)
    dropped = DroppedWriter(out_dir, stage)
    dropped.prefix = f"dropped-{stage}-{name}"
    mask = np.ones(table.num_rows, bool)
    record = []
    matched = [(r, hits) for r, hits in enumerate(match_texts(table_texts(table, config.text_columns), index, config))
               if hits]
    rows = table.take(pa.array([r for r, _ in matched], pa.int64())).to_pylist()  # one take, not one per drop
    for (r, hits), row in zip(matched, rows):
        top = hits[0]
        item = index.items[top.item]
        mask[r] = False
        reason = "contaminated_ngram" if top.tier == "ngram" else "contaminated_embedding"
        detail = {"overlap" if top.tier == "ngram" else "cosine": round(top.score, 4), "matches": len(hits)}
        dropped.drop(reason, row=row, detail=json.dumps(detail), row_id=ids[r],
                     match_id=f"{item.benchmark}:{item.item_id}", source=row.get("source"),
                     source_row=row.get("source_row"),
                     conversation_id=row.get("conversation_id", row.get("id")))
        stats.drop(reason)
        for h in hits:
            it = index.items[h.item]
            record.append({"row_id": ids[r], "benchmark": it.benchmark, "item_id": it.item_id,
                           "tier": h.tier, "score": round(h.score, 4)})
    clean = table.num_rows - len(matched)
    stats.keep(outputs=clean, rows=clean)
    dropped.close()
    pq.write_table(table.filter(pa.array(mask)), out_dir / f"part-{name}.parquet", compression="zstd")
    (out_dir / f"hits-{name}.json").write_text(json.dumps(record))
    return stats.check()


def write_report(out_dir: Path, index: BenchmarkIndex, config: DecontamConfig) -> dict:
    """Merge the shards' hits into `decontam_report.json`: per benchmark, items hit and by which rows."""
    out_dir = Path(out_dir)
    per: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out_dir.glob("hits-*.json")):
        for h in json.loads(path.read_text()):
            per[h["benchmark"]][h["item_id"]].append(h["row_id"])
    sizes = index.per_benchmark()
    report = {
        "benchmarks_fingerprint": index.fingerprint,
        "config": config.model_dump(mode="json"),
        "items_too_short_for_ngrams": index.too_short,
        "benchmarks": {
            name: {"items": sizes[name], "items_hit": len(per.get(name, {})),
                   "rows_hit": len({r for rows in per.get(name, {}).values() for r in rows}),
                   "hits": {i: sorted(set(rows)) for i, rows in sorted(per.get(name, {}).items())}}
            for name in sorted(sizes)
        },
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def decontaminate_shards(in_shards: list[Path], out_dir: Path, config: DecontamConfig = DecontamConfig(),
                         index: BenchmarkIndex | None = None, *, stage: str) -> StageStats:
    """Build the index once, decontaminate every shard, write the report."""
    index = index or build_benchmark_index(config)
    stats = StageStats.total(stage, [decontaminate_shard(s, out_dir, config, index, n, stage=stage)
                                     for n, s in enumerate(in_shards)])
    write_report(out_dir, index, config)
    return stats
