"""Teacher-forced hidden states of several continuations of the same prompts, the prompt run once.

Retention scores two sequences per example under the same model: the gold reference and the model's
own completion, both after the same chat-templated prompt. Packing each as ``[prompt; continuation]``
recomputes the prompt (usually the longer part) once per continuation. Here a length group's prompts
run once through the decoder into a KV cache; each continuation then runs against that cache and the
cache is cropped back to the prompt before the next one. Positions and masks are those of the packed
pass (left-padded prompts, right-padded continuations), so the hidden states equal it up to float
rounding (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from stages.train.step import decoder_of, group_by_length


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[r, width - len(s):] = 1
    return ids, attn


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    steps = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), steps), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), steps), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        attn[r, :len(s)] = 1
    return ids, attn


@torch.no_grad()
def shared_prompt_hidden(model: nn.Module, prompts: list[list[int]], continuations: list[list[list[int]]],
                         pad_id: int, *, bf16: bool = False, budget: int = 8192) -> list[Tensor]:
    """Hidden states predicting each continuation's tokens, one prompt pass per length group.

    prompts: R token lists; continuations: K sets of R token lists (e.g. gold references, completions).
    Returns K float32 tensors (R, T_k, H): row r, column j is the final hidden state that predicts
    token j of continuation k of row r (columns past the row's length are unspecified: mask them). `model` is a causal LM (PEFT-wrapped or
    not; its adapters stay in effect); under `bf16` the decoder runs in bfloat16 autocast.
    """
    decoder = decoder_of(model)
    device = next(decoder.parameters()).device
    longest = [max(len(c[r]) for c in continuations) for r in range(len(prompts))]
    steps = [max(1, max(len(s) for s in c)) for c in continuations]
    out: list[Tensor | None] = [None] * len(continuations)
    for rows in group_by_length([len(p) for p in prompts], longest, budget):
        ids, attn = _left_pad([prompts[r] for r in rows], pad_id)
        ids, attn = ids.to(device), attn.to(device)
        lengths = attn.sum(-1, keepdim=True)  # (g, 1) real prompt tokens
        cache = DynamicCache()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            last = decoder(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                           past_key_values=cache, use_cache=True).last_hidden_state[:, -1:].float()  # (g, 1, H)
        for k, cont in enumerate(continuations):
            toks, cmask = _right_pad([cont[r] for r in rows], pad_id)
            t = toks.shape[1]
            hidden = last
            if t > 1:  # the last token's own hidden state predicts nothing that is scored
                toks, cmask = toks[:, :-1].to(device), cmask[:, :-1].to(device)
                pos = lengths + torch.arange(t - 1, device=device)[None, :]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    h = decoder(input_ids=toks, attention_mask=torch.cat([attn, cmask], 1), position_ids=pos,
                                past_key_values=cache, use_cache=True).last_hidden_state.float()
                cache.crop(-toks.shape[1])  # back to the prompt alone
                hidden = torch.cat([last, h], 1)  # (g, t, H)
            if out[k] is None:
                out[k] = hidden.new_zeros((len(prompts), steps[k], hidden.shape[-1]))
            out[k][torch.tensor(rows, device=device), :t] = hidden
    return out  # type: ignore[return-value]
