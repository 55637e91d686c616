"""faiss indexes over normalised donor embeddings: exact (flat), IVF or HNSW, on GPU when available.

``flat`` is exact inner-product search (the default, right for pools up to a few hundred thousand);
``ivf`` clusters the pool into ``nlist`` cells and visits ``nprobe`` of them; ``hnsw`` is a graph index
with ``M`` links per node. When the installed faiss is faiss-gpu and a GPU is visible, flat and IVF
indexes are moved to GPU 0 transparently (HNSW has no GPU version). Indexes are always saved from a CPU
copy, so a saved index opens on any machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class IndexParams:
    kind: IndexKind = "flat"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    seed: int = 0
    device: str = "auto"


def default_nlist(n: int) -> int:
    """About 4·sqrt(n) cells, but at least 39 training points per cell (faiss' own minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _use_gpu(device: str) -> bool:
    import faiss

    if device == "cpu" or not hasattr(faiss, "StandardGpuResources"):
        return False
    return faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, params: IndexParams):
    """A searchable faiss index over ``vectors`` (n, d), inner-product metric."""
    import faiss

    n, d = vectors.shape
    if params.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif params.kind == "ivf":
        nlist = min(params.nlist or default_nlist(n), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = params.seed
        index.train(vectors)
        index.nprobe = min(params.nprobe, nlist)
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = params.ef_search
    else:
        raise ValueError(f"unknown index kind {params.kind!r} (flat, ivf or hnsw)")
    if params.kind != "hnsw" and _use_gpu(params.device):
        log.info("retrieval: searching on GPU")
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    return index


def save_index(index, path: Path) -> None:
    """Write ``index`` (moved to CPU first when it lives on a GPU)."""
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        index = faiss.index_gpu_to_cpu(index)
    faiss.write_index(index, str(path))


def search(index, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions), each (q, depth); positions are -1 where the index found fewer."""
    depth = max(1, min(depth, index.ntotal))
    scores, positions = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    return scores, positions
