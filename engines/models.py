"""Model loading: resolve a model reference, load a causal LM and its tokenizer, fingerprint it.

A model reference is ``embedded:smollm2-135m-instruct`` (the bundled default), a local HF folder, or a
hub id already in the local HF cache (``HF_HUB_OFFLINE`` is respected; nothing is downloaded unless the
user allows it). The fingerprint enters every cache key that depends on the weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines import assets
from engines.stops import CHAT_TEMPLATES, NoChatTemplate, config_eos_ids, prepare_tokenizer
from engines.weights import check_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    path: str = assets.EMBEDDED_MODEL
    """Model reference: `embedded:smollm2-135m-instruct`, a local HF folder, or a hub id in the local HF cache."""
    name: str | None = None
    """Label used in result tables; defaults to the folder or hub name."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype for evaluation: auto = bfloat16 where the device computes it natively (CUDA with bf16,
    CPUs with AMX or AVX512-BF16), else float32 (on AVX2-only CPUs bf16 is ~5x slower). Training keeps
    float32 master weights."""
    device: str = "auto"
    """`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    chat_template: Literal["auto", "plain"] = "auto"
    """How prompts become model input: `auto` = the tokenizer's own chat template (a model without one is
    refused before any work, naming this setting); `plain` = the bare prompt text (for base models without
    a template; a reply then ends with the tokenizer's eos)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("model.path: empty")
        if self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"model.chat_template must be one of {', '.join(CHAT_TEMPLATES)}, "
                             f"got {self.chat_template!r}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path == assets.EMBEDDED_MODEL:
            return "SmolLM2-135M-Instruct"
        if self.path == assets.TINY_MODEL:
            return "tiny-random-llama"
        return Path(self.path.rstrip("/")).name or self.path


def resolve_path(ref: str) -> str:
    """Turn a model reference into something `from_pretrained` accepts, with a one-line error if absent."""
    if ref == assets.EMBEDDED_MODEL:
        return str(assets.embedded_model_path())
    if ref == assets.TINY_MODEL:
        return str(assets.tiny_model_path())
    if ref.startswith("embedded:"):
        raise ValueError(f"model.path: unknown embedded model {ref!r} (known: {assets.EMBEDDED_MODEL})")
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ValueError(f"model.path: {p} has no config.json (not a Hugging Face model folder)")
        return str(p.resolve())
    if ref.startswith((".", "/", "~")):
        raise ValueError(f"model.path: {ref} does not exist")
    return ref  # hub id: from_pretrained decides (offline cache or download)


def fingerprint(ref: str) -> str:
    """Identity of the weights behind a reference, for cache keys (cheap: no full-file hashing)."""
    if ref in (assets.EMBEDDED_MODEL, assets.TINY_MODEL):
        return f"{ref}@{assets.GGUF_SHA256[:16]}"
    p = Path(ref).expanduser()
    if not p.exists():
        return ref
    marker = p / "unisd-asset.json"
    if marker.exists():
        return json.loads(marker.read_text()).get("sha256", ref)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model", ".txt", ".jinja"}:
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:32]


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (CUDA with bf16; CPUs with AMX or AVX512-BF16).

    Elsewhere bfloat16 is emulated and slower than float32.
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def kernel_isa(device: str = "cpu") -> str:
    """The instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...), or the CUDA device name."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` -> bfloat16 where `device` computes it natively, else float32; an explicit dtype wins.

    Logged once per (dtype, device), so a run states which precision produced its numbers.
    """
    if dtype != "auto":
        return dtype
    device = pick_device(device)
    chosen = "bfloat16" if native_bf16(device) else "float32"
    log.info("precision auto on %s (%s): %s", device, kernel_isa(device), chosen)
    return chosen


def precision_record(dtype: str, device: str) -> dict[str, str]:
    """What a manifest records of the arithmetic behind an artifact: dtype, device, kernel ISA, torch."""
    import torch

    device = pick_device(device)
    return {"dtype": resolve_dtype(dtype, device), "device": device, "isa": kernel_isa(device),
            "torch": torch.__version__}


def check_chat_template(cfg: ModelConfig) -> None:
    """Refuse a local model folder without a chat template up front (unless `chat_template: plain`)."""
    if cfg.chat_template == "plain" or cfg.path.startswith("embedded:"):
        return
    path = Path(resolve_path(cfg.path))
    if not path.is_dir():
        return  # a hub id: checked when its tokenizer loads
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.exists() and json.loads(tok_cfg.read_text()).get("chat_template"):
        return
    raise NoChatTemplate(f"model {cfg.path} has no chat template: set model.chat_template=plain to send "
                         "prompts as plain text, or use an instruct model")


def load_tokenizer(ref: str, chat_template: str = "auto", model_eos: object = None):
    """The tokenizer of ``ref``, left-padded, with its chat template checked (or the plain one set) and the
    ids that end a completion attached (`engines.stops`: the end-of-turn token and every eos id of the
    model's generation config, ``model_eos`` or the folder's own)."""
    from transformers import AutoTokenizer

    path = resolve_path(ref)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    eos = model_eos if model_eos is not None else config_eos_ids(path)
    return prepare_tokenizer(tok, chat_template=chat_template, model_eos=eos, where=f"model {ref}")


def load_model(cfg: ModelConfig, *, trainable: bool = False):
    """Load (model, tokenizer) in eval mode on the configured device and dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_path(cfg.path)
    check_weights(path)  # a truncated weight file: one line naming it, not a SafetensorError
    check_chat_template(cfg)  # before the weights load: a missing template is one line, at once
    device = pick_device(cfg.device)
    dtype_name = resolve_dtype(cfg.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype_name))
    model.to(device)
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    log.info("loaded %s (%s, %.1fM params) on %s", cfg.label, dtype_name,
             sum(p.numel() for p in model.parameters()) / 1e6, next(model.parameters()).device)
    gen = getattr(model, "generation_config", None)
    return model, load_tokenizer(cfg.path, cfg.chat_template, getattr(gen, "eos_token_id", None))
