"""Deduplication of a build's shards: exact, MinHash near-duplicate, and semantic (embeddings).

A multi-step algorithm over all shards of a build, like datatrove's MinHash steps:

1. `sketch_shard` (per shard): normalised-text hash + MinHash signature of every row.
2. `resolve` (global): first occurrence wins, in the order (earlier versions, shard order, row
   order). Exact duplicates by hash; near duplicates by LSH buckets, verified by the exact
   Jaccard of the two rows' shingle sets (kept from step 1; estimated from the signatures for
   rows of earlier versions), connected into clusters whose lowest-ordered member is kept.
3. `semantic_pass` (optional, global): embeddings of the surviving rows, greedy in order against
   a FAISS inner-product index that already holds earlier versions' embeddings.
4. `write_shard` (per shard): `part-NNNNN.parquet` with the kept rows and the drops in
   `dropped-dedup-*.parquet` (reason + match_id = the kept row's id, or the earlier version's).

The kept rows' hashes, signatures and embeddings are written to `out_dir/index/`; a later build
passes such directories as `previous_indexes` and is deduplicated against them without
recomputing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator

from pipeline.filters import kernels, minhash
from pipeline.filters.embed import DEFAULT_MODEL, embed_texts, flat_ip_index
from pipeline.filters.normalize import NormalizeConfig, ngram_hashes, normalize_texts, table_texts, tokenize
from pipeline.filters.parallel import map_batches, workers_field
from pipeline.config import Strict
from pipeline.engines.identity import model_identity
from pipeline.shards import DroppedWriter
from pipeline.stats import StageStats

INDEX_FORMAT = 2  # 2: non-ASCII letters survive punctuation folding


class NearDupConfig(Strict):
    enabled: bool = True
    shingle_size: int = Field(3, ge=1, le=32, description="Word n-gram shingles")
    num_perm: int = Field(128, ge=8, le=1024)
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard to call a near duplicate")
    bands: int | None = Field(None, ge=1, description="LSH bands (default: datasketch's optimum)")
    rows: int | None = Field(None, ge=1, description="LSH rows per band")
    fn_weight: float = Field(0.7, gt=0, lt=1, description="Weight of misses vs false candidates when "
                             "choosing bands/rows (datasketch's optimiser)")
    sketch: Literal["oph", "kperm"] = Field(
        "oph", description="oph: one-permutation hashing (fast); kperm: num_perm hash functions")
    seed: int = 1
    verify: bool = Field(True, description="Drop LSH candidates only above the Jaccard threshold")

    @model_validator(mode="after")
    def _bands(self) -> "NearDupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        minhash.lsh_params(self.threshold, self.num_perm, self.bands, self.rows, self.fn_weight)
        return self


class SemanticConfig(Strict):
    enabled: bool = Field(False, description="Costly on CPU: every surviving prompt is embedded")
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model path (default: packaged MiniLM)")
    threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity to call a duplicate")
    batch_size: int = Field(256, ge=1)


class DedupConfig(Strict):
    id_column: str = Field("id", description="id for conversations, pair_id for pairs")
    prompt_column: str = "prompt"
    include_responses: bool = Field(False, description="Also compare the response columns")
    response_columns: list[str] = Field(default_factory=lambda: ["responses"])
    normalize: NormalizeConfig = NormalizeConfig()
    exact: bool = True
    near: NearDupConfig = NearDupConfig()
    semantic: SemanticConfig = SemanticConfig()
    batch_rows: int = Field(8192, ge=1, description="Rows sketched per vectorised batch")
    workers: int | None = workers_field()

    @property
    def text_columns(self) -> list[str]:
        return [self.prompt_column] + (self.response_columns if self.include_responses else [])


@dataclass
class Sketch:
    """Per-row dedup keys of one shard (or of a previous version's index)."""

    ids: list[str]
    exact: np.ndarray  # uint64
    signatures: np.ndarray  # uint32 (rows x num_perm)
    has_sig: np.ndarray  # bool
    canonical: list[str] | None = None  # previous versions: the published row each row maps to
    sets: minhash.ShingleSets | None = None  # current rows: shingle sets for exact verification

    def published(self, i: int) -> str:
        return self.canonical[i] if self.canonical is not None else self.ids[i]

    @classmethod
    def concat(cls, parts: list["Sketch"], num_perm: int) -> "Sketch":
        if not parts:
            return cls([], np.zeros(0, np.uint64), np.zeros((0, num_perm), np.uint32), np.zeros(0, bool))
        sets = minhash.ShingleSets.concat([p.sets for p in parts]) if all(p.sets for p in parts) else None
        return cls([i for p in parts for i in p.ids], np.concatenate([p.exact for p in parts]),
                   np.concatenate([p.signatures for p in parts]), np.concatenate([p.has_sig for p in parts]),
                   [p.published(i) for p in parts for i in range(len(p.ids))], sets)


def sketch_texts(texts: pa.StringArray | list[str], config: DedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact hashes, signatures, has_sig) of a batch of raw texts (exact hashes are 0 when
    exact dedup is off)."""
    return sketch_batch(texts, config, keep_sets=False)[:3]


def sketch_batch(texts: pa.StringArray | list[str], config: DedupConfig, keep_sets: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, minhash.ShingleSets | None]:
    """`sketch_texts` plus, with `keep_sets` and near dedup on, the texts' shingle sets."""
    norm = normalize_texts(texts, config.normalize, collapse_whitespace=config.exact)
    exact = np.zeros(len(norm), np.uint64)
    if config.exact:
        folded = norm.to_pylist()
        exact = np.fromiter((xxhash.xxh3_64_intdigest(s.encode("utf-8")) for s in folded), np.uint64, len(norm))
        empty = [i for i, s in enumerate(folded) if not s]
        if empty:  # nothing left after folding (only symbols): only identical raw texts are duplicates
            raw = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
            for i, t in zip(empty, raw.take(pa.array(empty)).to_pylist()):
                exact[i] = xxhash.xxh3_64_intdigest(b"raw\0" + (t or "").encode("utf-8"))
    near = config.near
    if not near.enabled:
        return exact, np.zeros((len(norm), 0), np.uint32), np.zeros(len(norm), bool), None
    tokens = tokenize(norm)
    sets = None
    if near.sketch == "oph":  # shingling, hashing and densifying fused in one compiled pass
        if keep_sets:
            sig, has, sets = minhash.oph_sketch_sets(tokens, near.shingle_size, near.num_perm, near.seed)
        else:
            sig, has = minhash.oph_sketch(tokens, near.shingle_size, near.num_perm, near.seed)
    else:
        grams, docs = ngram_hashes(tokens, near.shingle_size, whole_if_shorter=True)
        sig, has = minhash.kperm_signatures(grams, docs, len(norm), near.num_perm, near.seed)
        if keep_sets:
            sets = minhash.gram_sets(grams, docs, len(norm), near.seed)
    return exact, sig, has, sets


def sketch_rows(texts: pa.StringArray, config: DedupConfig, ids: list[str]) -> Sketch:
    """The `Sketch` of any number of texts, in `batch_rows` batches on `workers` threads (with
    the shingle sets when candidates are verified exactly)."""
    near = config.near
    keep = near.enabled and near.verify  # verified by exact Jaccard: 4 bytes per shingle in memory
    starts = range(0, len(texts), config.batch_rows)
    parts = map_batches(lambda s: sketch_batch(texts.slice(s, config.batch_rows), config, keep), starts,
                        config.workers)
    k = near.num_perm if near.enabled else 0
    if not parts:
        return Sketch(ids, np.zeros(0, np.uint64), np.zeros((0, k), np.uint32), np.zeros(0, bool),
                      sets=minhash.ShingleSets.empty(0) if keep else None)
    sets = minhash.ShingleSets.concat([p[3] for p in parts]) if keep else None
    return Sketch(ids, *(np.concatenate([p[i] for p in parts]) for i in range(3)), sets=sets)


def sketch_all(texts: pa.StringArray, config: DedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`sketch_texts` over any number of texts, in `batch_rows` batches on `workers` threads."""
    starts = range(0, len(texts), config.batch_rows)
    parts = map_batches(lambda s: sketch_texts(texts.slice(s, config.batch_rows), config), starts,
                        config.workers)
    k = config.near.num_perm if config.near.enabled else 0
    if not parts:
        return np.zeros(0, np.uint64), np.zeros((0, k), np.uint32), np.zeros(0, bool)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _read(shard: Path, columns: list[str]) -> pa.Table:
    return pq.read_table(shard, columns=columns)


def _ids(table: pa.Table, id_column: str, shard: Path) -> list[str]:
    ids = table.column(id_column).to_pylist()
    return [i if i is not None else f"{shard.name}#{n}" for n, i in enumerate(ids)]


def sketch_shard(shard: Path, config: DedupConfig) -> Sketch:
    table = _read(shard, [config.id_column, *config.text_columns])
    return sketch_rows(table_texts(table, config.text_columns), config,
                       _ids(table, config.id_column, shard) if table.num_rows else [])


@dataclass
class Decisions:
    """Per current row: None (kept) or (reason, match_id, detail)."""

    drops: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # near-dup candidates checked / joined


def index_meta(config: DedupConfig) -> dict:
    near = config.near
    bands, rows = minhash.lsh_params(near.threshold, near.num_perm, near.bands, near.rows, near.fn_weight)
    return {
        "format": INDEX_FORMAT,
        "normalize": config.normalize.model_dump(mode="json"),
        "text_columns": config.text_columns,
        "near": {"enabled": near.enabled, "shingle_size": near.shingle_size, "num_perm": near.num_perm,
                 "sketch": near.sketch, "seed": near.seed, "bands": bands, "rows": rows},
        # by identity: an embedder directory rewritten in place is another model
        "semantic_model": model_identity(config.semantic.model) if config.semantic.enabled else None,
    }


class IndexMismatch(ValueError):
    """A previous version's index was built with incompatible settings."""


def load_index(directory: Path, config: DedupConfig) -> tuple[Sketch, np.ndarray | None, list[str]]:
    """(sketch, embeddings or None, embedding ids) of a previous version's index directory."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    want = index_meta(config)
    for key in ("format", "normalize", "text_columns"):
        if meta[key] != want[key]:
            raise IndexMismatch(f"{directory}: index {key} {meta[key]!r} != current {want[key]!r}")
    if config.near.enabled:
        for key in ("shingle_size", "num_perm", "sketch", "seed"):
            if meta["near"].get(key) != want["near"][key]:
                raise IndexMismatch(f"{directory}: near.{key} {meta['near'].get(key)!r} != {want['near'][key]!r}")
    id_table = pq.read_table(directory / "ids.parquet")
    ids = id_table.column("id").to_pylist()
    k = config.near.num_perm if config.near.enabled else 0
    sig = np.load(directory / "signatures.npy") if config.near.enabled else np.zeros((len(ids), 0), np.uint32)
    has = np.load(directory / "has_sig.npy") if config.near.enabled else np.zeros(len(ids), bool)
    sketch = Sketch(ids, np.load(directory / "exact.npy"), sig.reshape(len(ids), k), has,
                    id_table.column("published_id").to_pylist())
    emb, emb_ids = None, []
    if config.semantic.enabled and (directory / "embeddings.npy").exists():
        if meta.get("semantic_model") != want["semantic_model"]:
            raise IndexMismatch(f"{directory}: semantic model {meta.get('semantic_model')!r} differs")
        emb = np.load(directory / "embeddings.npy")
        emb_ids = pq.read_table(directory / "embedding_ids.parquet").column("id").to_pylist()
    return sketch, emb, emb_ids


def resolve(current: Sketch, previous: Sketch, config: DedupConfig) -> Decisions:
    """Exact then near-duplicate decisions for the current rows (indexes into `current`)."""
    out = Decisions()
    n_prev, n_cur = len(previous.ids), len(current.ids)
    ids = [previous.published(i) for i in range(n_prev)] + current.ids
    alive = np.ones(n_prev + n_cur, bool)
    if config.exact and n_cur:
        allh = np.concatenate([previous.exact, current.exact])
        _, first, inverse = np.unique(allh, return_index=True, return_inverse=True)
        firsts = first[inverse.reshape(-1)]
        for g in np.flatnonzero(firsts[n_prev:] != np.arange(n_prev, n_prev + n_cur)) + n_prev:
            out.drops[int(g) - n_prev] = ("exact_duplicate", ids[firsts[g]], "")
            alive[g] = False
    near = config.near
    if near.enabled and n_cur:
        if n_prev:
            sig = np.concatenate([previous.signatures, current.signatures])
            has = np.concatenate([previous.has_sig, current.has_sig])
        else:  # no earlier versions: no copy of the signatures
            sig, has = current.signatures, current.has_sig
        bands, rows = minhash.lsh_params(near.threshold, near.num_perm, near.bands, near.rows, near.fn_weight)
        sets, has_set = None, None
        if near.verify and current.sets is not None:
            # earlier versions keep no shingle sets: their rows are verified by the estimate
            sets = minhash.ShingleSets(current.sets.values,
                                       np.concatenate([np.zeros(n_prev, np.int64), current.sets.offsets]))
            has_set = np.r_[np.zeros(n_prev, bool), np.ones(n_cur, bool)]
        # the verified candidate graph's components; the lowest-ordered row of each is kept
        reps, out.counters = minhash.lsh_roots(sig, alive & has, bands, rows, near.threshold, near.verify,
                                               sets, has_set, n_prev)
        n = n_prev + n_cur
        dup = np.flatnonzero(reps[n_prev:] != np.arange(n_prev, n)) + n_prev
        if len(dup):
            est = kernels.signature_agreement(sig, dup, reps[dup])
            for g, r, e in zip(dup.tolist(), reps[dup].tolist(), est.tolist()):
                out.drops[g - n_prev] = ("near_duplicate", ids[r], f'{{"jaccard_estimate": {round(e, 4)}}}')
    return out


def semantic_pass(shards: list[Path], offsets: list[int], decisions: Decisions, config: DedupConfig,
                  prev_emb: np.ndarray | None, prev_ids: list[str], ids: list[str]
                  ) -> tuple[np.ndarray, list[str]]:
    """Greedy in-order semantic dedup of the rows still kept; returns the kept embeddings + ids."""
    sem = config.semantic
    dim_index = None
    kept_emb: list[np.ndarray] = []
    kept_ids: list[str] = []
    index_ids: list[str] = list(prev_ids)
    for shard, base in zip(shards, offsets):
        table = _read(shard, config.text_columns)
        texts = table_texts(table, config.text_columns).to_pylist()
        rows = [i for i in range(len(texts)) if (base + i) not in decisions.drops]
        for s in range(0, len(rows), sem.batch_size):
            batch = rows[s:s + sem.batch_size]
            emb = embed_texts([texts[i] for i in batch], sem.model, sem.batch_size)
            if dim_index is None:
                dim_index = flat_ip_index(emb.shape[1])
                if prev_emb is not None and len(prev_emb):
                    dim_index.add(prev_emb)
            best_sim = np.full(len(batch), -1.0)
            best_id: list[str | None] = [None] * len(batch)
            if dim_index.ntotal:
                dist, idx = dim_index.search(emb, 1)
                best_sim = dist[:, 0].astype(float)
                best_id = [index_ids[j] if j >= 0 else None for j in idx[:, 0]]
            within = emb @ emb.T
            keep_local: list[int] = []
            for j, row in enumerate(batch):
                sim, match = best_sim[j], best_id[j]
                for k in keep_local:
                    if within[j, k] > sim:
                        sim, match = float(within[j, k]), ids[base + batch[k]]
                if match is not None and sim >= sem.threshold:
                    decisions.drops[base + row] = ("semantic_duplicate", match,
                                                   json.dumps({"cosine": round(float(sim), 4)}))
                else:
                    keep_local.append(j)
            if keep_local:
                dim_index.add(emb[keep_local])
                kept_emb.append(emb[keep_local])
                new_ids = [ids[base + batch[k]] for k in keep_local]
                kept_ids += new_ids
                index_ids += new_ids
    dim = kept_emb[0].shape[1] if kept_emb else 0
    return (np.concatenate(kept_emb) if kept_emb else np.zeros((0, dim), np.float32)), kept_ids


def write_shard(shard: Path, out_path: Path, base: int, decisions: Decisions, dropped: DroppedWriter,
                stats: StageStats, id_column: str) -> None:
    table = pq.read_table(shard)
    mask = np.ones(table.num_rows, bool)
    for i in range(table.num_rows):
        d = decisions.drops.get(base + i)
        if d is None:
            stats.keep()
            continue
        mask[i] = False
        reason, match, detail = d
        row = table.slice(i, 1).to_pylist()[0]
        dropped.drop(reason, row=row, detail=detail, row_id=row.get(id_column), match_id=match,
                     source=row.get("source"), source_row=row.get("source_row"),
                     conversation_id=row.get("conversation_id", row.get("id")))
        stats.drop(reason)
    pq.write_table(table.filter(pa.array(mask)), out_path, compression="zstd")


def write_index(directory: Path, config: DedupConfig, current: Sketch, decisions: Decisions,
                embeddings: np.ndarray | None, embedding_ids: list[str]) -> None:
    """Every row's keys (dropped rows too, mapped to the published row they duplicate), so a later
    build matches a re-ingested row even when it was a near duplicate here."""
    directory.mkdir(parents=True, exist_ok=True)
    position = {rid: n for n, rid in enumerate(current.ids)}
    published = []
    for n, rid in enumerate(current.ids):
        seen = set()
        while n in decisions.drops and n not in seen:
            seen.add(n)
            rid = decisions.drops[n][1]
            n = position.get(rid, -1)
        published.append(rid)
    meta = index_meta(config) | {"rows": len(current.ids), "published": len(current.ids) - len(decisions.drops)}
    pq.write_table(pa.table({"id": pa.array(current.ids, pa.string()),
                             "published_id": pa.array(published, pa.string())}), directory / "ids.parquet")
    np.save(directory / "exact.npy", current.exact)
    if config.near.enabled:
        np.save(directory / "signatures.npy", current.signatures)
        np.save(directory / "has_sig.npy", current.has_sig)
    if config.semantic.enabled and embeddings is not None:
        np.save(directory / "embeddings.npy", embeddings.astype(np.float32))
        pq.write_table(pa.table({"id": pa.array(embedding_ids, pa.string())}), directory / "embedding_ids.parquet")
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def dedup_shards(in_shards: list[Path], out_dir: Path, config: DedupConfig = DedupConfig(),
                 previous_indexes: list[Path] = (), *, stage: str) -> StageStats:
    """Deduplicate all shards of a build (and against earlier versions' indexes); `stage` names the drops."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = config.near.num_perm if config.near.enabled else 0
    prev_parts, prev_embs, prev_emb_ids = [], [], []
    for d in previous_indexes:
        sk, emb, emb_ids = load_index(Path(d), config)
        prev_parts.append(sk)
        if emb is not None:
            prev_embs.append(emb)
            prev_emb_ids += emb_ids
    previous = Sketch.concat(prev_parts, k)
    sketches = [sketch_shard(Path(s), config) for s in in_shards]
    offsets = np.cumsum([0] + [len(s.ids) for s in sketches]).tolist()
    current = Sketch.concat(sketches, k)
    decisions = resolve(current, previous, config)
    embeddings, emb_ids = None, []
    if config.semantic.enabled:
        embeddings, emb_ids = semantic_pass(
            [Path(s) for s in in_shards], offsets, decisions, config,
            np.concatenate(prev_embs) if prev_embs else None, prev_emb_ids, current.ids)
    stats = StageStats(stage)
    dropped = DroppedWriter(out_dir, stage)
    for n, shard in enumerate(in_shards):
        write_shard(Path(shard), out_dir / f"part-{n:05d}.parquet", offsets[n], decisions, dropped,
                    stats, config.id_column)
    dropped.close()
    write_index(out_dir / "index", config, current, decisions, embeddings, emb_ids)
    return stats.check()
