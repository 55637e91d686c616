"""Prompt prefill for `engines.continuous`: left-padded batches, and a token prefix shared by every prompt.

The prompts of one `generate` call usually begin with the same tokens: the chat template's system turn
and the dataset's instruction (46 of HumanEval's ~190 tokens per prompt, 36 of MedMCQA's ~140, 32 of the
maths prompts' ~87). `SharedPrefix` runs those tokens through the model once; each later prefill then
runs only the prompts' remaining tokens, attending to the prefix's cached keys/values (expanded to the
batch) followed by the left-padded suffixes. Positions count real tokens only, so every row sees the
same positions and the same real keys as when its whole prompt is prefilled; the prefix's keys/values
are copied into the row's slot by the caller (`Prefill.rows`).

A prefix is shared only when it is at least `MIN_SHARED_TOKENS` long, and it always leaves one token of
every prompt to prefill (the next-token logits come from a prompt's own last position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

MIN_SHARED_TOKENS = 8
"""A shorter common prefix is not worth a forward pass of its own."""


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token of the shortest prompt (0: none)."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@dataclass
class SharedPrefix:
    """Keys/values of the prompts' common first tokens, computed once per `generate` call."""

    tokens: list[int]
    keys: list[torch.Tensor]  # per layer (1, H, P, D)
    values: list[torch.Tensor]  # per layer (1, H, P, D)

    @property
    def length(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, model, prompts: Sequence[Sequence[int]], device: torch.device) -> SharedPrefix | None:
        """The shared prefix of ``prompts`` run through ``model`` (None: shorter than `MIN_SHARED_TOKENS`)."""
        n = common_prefix_length(prompts)
        if n < MIN_SHARED_TOKENS:
            return None
        tokens = list(prompts[0][:n])
        cache = DynamicCache()
        model(input_ids=torch.tensor([tokens], device=device), position_ids=torch.arange(n, device=device)[None],
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cls(tokens, [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])


@dataclass
class Prefill:
    """Caches and next-token logits of prompts run together with left padding.

    ``keys``/``values`` hold each prompt's own tokens (after the shared prefix, if any), right-aligned in
    ``width`` columns; ``lengths`` are whole prompt lengths, the shared prefix included.
    """

    keys: list[torch.Tensor]  # per layer (k, H, W, D)
    values: list[torch.Tensor]  # per layer (k, H, W, D)
    lengths: list[int]
    logits: torch.Tensor  # (k, V) float32
    prefix: SharedPrefix | None = None

    @property
    def width(self) -> int:
        return self.keys[0].shape[2]

    @property
    def shared(self) -> int:
        return self.prefix.length if self.prefix is not None else 0

    def write(self, j: int, keys: list[torch.Tensor], values: list[torch.Tensor], slot: int, end: int) -> None:
        """Copy prompt ``j``'s keys/values, prefix included, into columns ``[end - n, end)`` of ``slot``."""
        n = self.lengths[j]
        own = n - self.shared
        for layer, (k, v) in enumerate(zip(keys, values)):
            k[slot, :, end - own:end] = self.keys[layer][j, :, self.width - own:]
            v[slot, :, end - own:end] = self.values[layer][j, :, self.width - own:]
            if self.prefix is not None:
                k[slot, :, end - n:end - own] = self.prefix.keys[layer][0]
                v[slot, :, end - n:end - own] = self.prefix.values[layer][0]


def prefill(model, batch: list[list[int]], pad_id: int, device: torch.device,
            prefix: SharedPrefix | None = None) -> Prefill:
    """One forward over left-padded prompts (positions count real tokens only, as ``generate`` does);
    with ``prefix``, only the tokens after it, attending to its cached keys/values."""
    shared = prefix.length if prefix is not None else 0
    if prefix is not None and any(ids[:shared] != prefix.tokens for ids in batch):
        raise ValueError("prefill: a prompt does not start with the shared prefix")
    own = [ids[shared:] for ids in batch]
    width = max(len(ids) for ids in own)
    if min(len(ids) for ids in own) < 1:
        raise ValueError("prefill: a prompt has no token after the shared prefix")
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
    attention_mask[:, :shared] = 1
    for r, ids in enumerate(own):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        attention_mask[r, shared + width - len(ids):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    if prefix is None:
        cache = DynamicCache()
    else:
        k = len(batch)
        cache = DynamicCache(ddp_cache_data=[(pk.expand(k, -1, -1, -1), pv.expand(k, -1, -1, -1))
                                             for pk, pv in zip(prefix.keys, prefix.values)])
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return Prefill([layer.keys[:, :, shared:] for layer in cache.layers],
                   [layer.values[:, :, shared:] for layer in cache.layers],
                   [len(ids) for ids in batch], out.logits[:, -1].float(), prefix)
