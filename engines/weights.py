"""Cheap integrity check of a model folder's safetensors files, before anything loads them.

A truncated or corrupt ``*.safetensors`` file otherwise surfaces deep inside ``from_pretrained`` as a
Rust ``SafetensorError`` whose message names no file. Reading only each file's header (8 bytes of
length, then a JSON table of tensor offsets) is enough to tell that the data it promises is not all
there, so the check runs at config validation and again right before a model is loaded, and fails
with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

_MAX_HEADER = 100 * 2**20  # the safetensors format caps its JSON header at 100 MB


class WeightsError(ValueError):
    """A model folder's weight file is truncated or corrupt (one line naming the file)."""


def check_weights(folder: str | Path) -> None:
    """Raise WeightsError for the first truncated or corrupt ``*.safetensors`` file in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a hub id: its files live in the HF cache and are checked by the loader
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            raise WeightsError(f"model.path: {path} is truncated or corrupt ({problem})")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None when its header and size agree."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        n = int.from_bytes(prefix, "little")
        if n > min(size - 8, _MAX_HEADER):
            return f"the header claims {n} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "the header is not valid JSON"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "a tensor entry in the header has no valid data_offsets"
    need = 8 + n + end
    if need > size:
        return f"its tensors need {need} bytes, the file has {size}"
    return None
