"""Teacher views of one base model, and the EMA that moves the EMA teacher (REFERENCE §2.2).

With LoRA (the default) no second copy of the base weights exists:

* frozen teacher  = the student with its adapter disabled (θ0);
* current teacher = the student with its adapter on, run without gradient;
* EMA teacher     = a second adapter "ema" on the same layers whose LoRA A/B weights follow
  θ̄ ← β·θ̄ + (1−β)·θ every N optimizer steps.

The reference applied the EMA to the frozen base weights, which equal θ0 under LoRA, so its EMA
teacher never moved (§8.1). Here the average runs over exactly the weights that train: the adapter's
A and B matrices (the teacher's update is B̄·Ā, an average of the factors rather than of the
product B·A; both start at the student's initialisation, so the teacher starts at θ0 too).
Full fine-tuning keeps an explicit frozen copy, EMA-updated over every parameter when kind=ema.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

EMA_ADAPTER = "ema"
STUDENT_ADAPTER = "default"


class EMA:
    """θ̄ ← β·θ̄ + (1−β)·θ over (name, source θ, target θ̄) tensor pairs, every `every` steps."""

    def __init__(self, pairs: list[tuple[str, Tensor, Tensor]], beta: float, every: int) -> None:
        if not pairs:
            raise ValueError("EMA: no parameters to average")
        for name, src, tgt in pairs:
            if src.shape != tgt.shape:
                raise ValueError(f"EMA: {name} has shape {tuple(src.shape)} vs target {tuple(tgt.shape)}")
        self.pairs = pairs
        self.beta = beta
        self.every = every
        self.updates = 0
        """Updates applied so far."""

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Apply the update when `step` is a multiple of `every`; returns whether it did."""
        if step % self.every:
            return False
        for _, src, tgt in self.pairs:
            tgt.mul_(self.beta).add_(src.detach().to(tgt.dtype), alpha=1.0 - self.beta)
        self.updates += 1
        return True

    def state_dict(self) -> dict:
        return {"updates": self.updates, "targets": {n: t.detach().cpu().clone() for n, _, t in self.pairs}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        targets = state["targets"]
        missing = [n for n, _, _ in self.pairs if n not in targets]
        if missing:
            raise ValueError(f"EMA state lacks {missing[0]!r}")
        for name, _, tgt in self.pairs:
            tgt.copy_(targets[name].to(tgt.device, tgt.dtype))
        self.updates = int(state["updates"])


def lora_ema_pairs(peft_model: nn.Module, source: str = STUDENT_ADAPTER,
                   target: str = EMA_ADAPTER) -> list[tuple[str, Tensor, Tensor]]:
    """(name, student LoRA weight, EMA LoRA weight) for every adapter tensor of `source`."""
    params = dict(peft_model.named_parameters())
    pairs = []
    for name, param in params.items():
        if f".{source}." not in name or "lora_" not in name:
            continue
        twin = name.replace(f".{source}.", f".{target}.")
        if twin not in params:
            raise ValueError(f"EMA adapter has no tensor matching {name!r}")
        pairs.append((name, param, params[twin]))
    return pairs


def head_weight(model: nn.Module) -> Tensor:
    """The LM-head weight (V, H) the chunked losses multiply hidden states with."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("models whose LM head has a bias are not supported by the chunked losses")
    return head.weight


@contextmanager
def merged_lora(model: nn.Module, adapter: str) -> Iterator[int]:
    """Run every LoRA linear of `adapter` as one matmul with W + s·B·A (yields how many were patched).

    The same function as the adapter's eval-mode forward (dropout is the identity there), without the
    low-rank side path, which on CPU costs about as much as the layer itself on small models. Meant for
    the no-grad teacher passes with `adapter` the only active adapter; W is never modified (the sum
    is formed per call), and the modules get their own forward back on exit.
    """
    from peft.tuners.lora import Linear as LoraLinear

    patched = []
    for module in model.modules():
        if (isinstance(module, LoraLinear) and adapter in module.lora_A and not module.merged
                and adapter not in module.lora_variant):
            def forward(x: Tensor, *args, _m=module, **kwargs) -> Tensor:
                base = _m.get_base_layer()
                return F.linear(x, base.weight + _m.get_delta_weight(adapter).to(base.weight.dtype), base.bias)

            patched.append((module, module.__dict__.get("forward")))
            module.forward = forward
    try:
        yield len(patched)
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


class Teachers:
    """Context managers yielding the teacher module, and the θ0 module for KL-to-start."""

    def __init__(self, student: nn.Module, *, lora: bool, kind: str, beta: float, every: int) -> None:
        self.student = student
        self.lora = lora
        self.kind = kind
        self.copy: nn.Module | None = None
        self.ema: EMA | None = None
        if not lora and kind in ("frozen", "ema"):
            self.copy = copy.deepcopy(student).eval().requires_grad_(False)
        if kind == "ema":
            if lora:
                self._add_ema_adapter()
                pairs = lora_ema_pairs(student)
            else:
                copies = dict(self.copy.named_parameters())  # type: ignore[union-attr]
                pairs = [(n, p, copies[n]) for n, p in student.named_parameters() if p.requires_grad]
            self.ema = EMA(pairs, beta, every)

    def _add_ema_adapter(self) -> None:
        student = self.student
        student.add_adapter(EMA_ADAPTER, copy.deepcopy(student.peft_config[STUDENT_ADAPTER]))
        with torch.no_grad():
            for _, src, tgt in lora_ema_pairs(student):
                tgt.copy_(src)
        student.set_adapter(STUDENT_ADAPTER)  # student adapter trainable, EMA adapter frozen

    @contextmanager
    def teacher(self) -> Iterator[nn.Module]:
        """The teacher's module for no-grad forwards (the caller sets eval mode)."""
        if self.kind == "current":
            with merged_lora(self.student, STUDENT_ADAPTER) if self.lora else nullcontext():
                yield self.student
        elif not self.lora:
            yield self.copy  # type: ignore[misc]
        elif self.kind == "frozen":
            with self.student.disable_adapter():
                yield self.student
        else:
            self.student.set_adapter(EMA_ADAPTER, inference_mode=True)
            try:
                with merged_lora(self.student, EMA_ADAPTER):
                    yield self.student
            finally:
                self.student.set_adapter(STUDENT_ADAPTER)

    @contextmanager
    def start(self) -> Iterator[nn.Module | None]:
        """θ0 (adapter disabled, or the frozen copy); None when full fine-tuning keeps no θ0 copy."""
        if self.lora:
            with self.student.disable_adapter():
                yield self.student
        else:
            yield self.copy if self.kind == "frozen" else None

    def update(self, step: int) -> bool:
        return self.ema.update(step) if self.ema is not None else False

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
