"""Model FLOPs utilisation: FLOPs the model's work needs, over the matmul peak measured in the same run.

Model FLOPs are counted per decoder pass by a forward pre-hook on every decoder stack (the student,
its adapter-disabled / EMA teacher views and any explicit teacher copy), from the pass's real
(non-padding) tokens:

- dense: ``2·N`` per token forward, N = the decoder's parameters (embedding matrix excluded);
  a pass with gradients enabled adds its backward: ``+4·N`` per token under full fine-tuning (6·N in
  all), ``+2·N`` under LoRA (activation gradients only: frozen weights get no weight gradient);
- attention: ``4·L·d`` per (query token, attended key) pair forward (QKᵀ and AV), the same ×3 or ×2
  with gradients; keys attended are counted from the attention mask (causal within the pass);
- the LM head is not counted (it runs only on completion positions, in chunks), so MFU is a lower bound.

Generated tokens are counted as they are decoded (one token per row per pass with a KV cache), prefill
as a forward over the prompt. The peak is a 2048³ matmul (or the step's own shape class if smaller) at
the precision the step's matmuls run in, best of a few repeats, with the same thread count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an n×n·n×n matmul in `dtype` on the CPU, with torch's current threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _is_decoder(m: nn.Module) -> bool:
    return hasattr(m, "embed_tokens") and hasattr(m, "layers") and hasattr(m, "config")


@dataclass
class FlopCounter:
    """Counts model FLOPs of every decoder pass of the modules it is attached to (see module docstring)."""

    lora: bool
    flops: float = 0.0
    tokens_trained: int = 0
    tokens_forward: int = 0
    _handles: list = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def attach(self, *modules: object) -> FlopCounter:
        for obj in modules:
            if not isinstance(obj, nn.Module):
                continue
            for m in obj.modules():
                if _is_decoder(m) and id(m) not in self._seen:
                    self._seen.add(id(m))
                    self._handles.append(m.register_forward_pre_hook(self._hook(m), with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, decoder: nn.Module):
        cfg = decoder.config
        n_params = sum(p.numel() for name, p in decoder.named_parameters() if "embed_tokens" not in name)
        layers, width = cfg.num_hidden_layers, cfg.hidden_size

        def hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = kwargs.get("inputs_embeds")
            shape = ids.shape if ids is not None else embeds.shape[:2]
            rows, new = int(shape[0]), int(shape[1])
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                real = mask[:, -new:].sum(-1).to(torch.float64)  # (R,) real new tokens per row
                keys_before = mask.sum(-1).to(torch.float64) - real  # cached real keys per row
            else:
                real = torch.full((rows,), float(new), dtype=torch.float64)
                keys_before = torch.zeros(rows, dtype=torch.float64)
            tokens = float(real.sum())
            pairs = float((real * keys_before + real * (real + 1) / 2).sum())  # (query, key) pairs, causal
            forward = 2 * n_params * tokens + 4 * layers * width * pairs
            grad = torch.is_grad_enabled()
            self.flops += forward * ((2 if self.lora else 3) if grad else 1)
            if grad:
                self.tokens_trained += int(tokens)
            else:
                self.tokens_forward += int(tokens)

        return hook
