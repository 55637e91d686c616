"""Resumable training state and the final checkpoint export.

Resume state lives in the workspace (``<workspace>/resume/state.pt``, replaced atomically): trainable
weights, EMA teacher, optimizer, scheduler, RNG states, the step reached (the data order and rollout
seeds are pure functions of the step) and the rows logged so far. Loading it and running the next
step reproduces the uninterrupted run.

The export under ``files/checkpoint/`` holds the LoRA adapter (``save_pretrained`` of PEFT) and
``merged/``, a plain transformers folder (safetensors + tokenizer) with the adapter folded into the
base weights, loadable by ``AutoModelForCausalLM.from_pretrained``. Full fine-tuning exports only
``merged/``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.train.teachers import STUDENT_ADAPTER

log = logging.getLogger(__name__)

STATE_FILE = Path("resume") / "state.pt"
CHECKPOINT = "checkpoint"
MERGED = "merged"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp sibling, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


@torch.no_grad()
def restore_trainable(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(own) != set(params):
        diff = sorted(set(own) ^ set(params))
        raise ValueError(f"resume state does not match the model (e.g. {diff[0]!r}); delete the workspace's "
                         f"resume/ folder to start over")
    for name, p in own.items():
        p.copy_(params[name].to(p.device, p.dtype))


def export(student: nn.Module, tokenizer, out: Path, *, lora: bool) -> Path:
    """Write the adapter (LoRA) and the merged plain-transformers folder to `out`; returns `out`.

    Under LoRA this merges the adapter into the base weights in place: call it last.
    """
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if lora:
        student.save_pretrained(str(tmp), selected_adapters=[STUDENT_ADAPTER])
        merged = student.merge_and_unload(adapter_names=[STUDENT_ADAPTER])
    else:
        merged = student
    merged.save_pretrained(str(tmp / MERGED))
    tokenizer.save_pretrained(str(tmp / MERGED))
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    log.info("checkpoint written to %s", out)
    return out
