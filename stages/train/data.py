"""Training data: which examples, their teacher views, the seeded order, and token packing.

Each train example carries its views from the `contexts` table: the privileged prompt c (the teacher
of the divergence), K auxiliary views (agreement weights only) and the negative views usable as a bad
teacher (contrastive). The data order is a seeded permutation per epoch, so the batch of any step is
a pure function of (seed, step): resuming needs only the step number.

Sequences are packed as [left-padded prompt; right-padded completion], so every row's completion
starts at the same column and the hidden state predicting completion token t sits at column W−1+t
for every view, whatever its prompt length.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import Tensor

from engines.generation import PromptTooLong, chat_ids
from stages.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainItem:
    """One train example and the texts of its teacher views."""

    id: str
    dataset: str
    prompt: str
    """The student prompt x (user turn)."""
    reference: str
    """Gold reference (SFT target)."""
    privileged: str
    """Teacher prompt c."""
    aux: tuple[str, ...]
    """K auxiliary views (empty when agreement is off)."""
    negatives: tuple[str, ...]
    """Negative views allowed as bad teacher (empty when contrastive is off or none exist)."""


def select_examples(cfg: TrainConfig, examples: pa.Table) -> list[dict]:
    """Train-split rows of the configured datasets, sorted by id, capped per dataset."""
    rows = [r for r in examples.to_pylist() if r["split"] == "train"]
    available = sorted({r["dataset"] for r in rows})
    if cfg.datasets:
        missing = [d for d in cfg.datasets if d not in available]
        if missing:
            raise ValueError(f"train.datasets: no train split for {missing[0]!r} "
                             f"(datasets with a train split: {', '.join(available) or 'none'})")
        rows = [r for r in rows if r["dataset"] in cfg.datasets]
    if not rows:
        raise ValueError("train: the examples table has no train split to train on")
    rows.sort(key=lambda r: r["id"])
    if cfg.max_train_examples is not None:
        per: dict[str, int] = defaultdict(int)
        kept = []
        for r in rows:
            if per[r["dataset"]] < cfg.max_train_examples:
                per[r["dataset"]] += 1
                kept.append(r)
        rows = kept
    return rows


def _negative_ok(negatives: pa.Table | None, sources: tuple[str, ...]) -> set[tuple[str, int]]:
    if negatives is None or negatives.num_rows == 0:
        return set()
    return {(r["id"], r["neg_id"]) for r in negatives.to_pylist()
            if r["source"] in sources and r["verified_wrong"] is not False}


def attach_views(cfg: TrainConfig, rows: list[dict], contexts: pa.Table,
                 negatives: pa.Table | None) -> list[TrainItem]:
    """Join each example with its views; one-line errors for missing or mismatched views."""
    views: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for r in contexts.to_pylist():
        views[r["id"]][r["view"]] = (r["strategy"], r["text"])
    allowed = _negative_ok(negatives, cfg.contrastive.sources)
    k = cfg.agreement.num_views if cfg.agreement.level != "none" else 0
    items, no_negative = [], 0
    for row in rows:
        mine = views.get(row["id"], {})
        if "privileged" not in mine:
            raise ValueError(f"contexts: example {row['id']!r} has no privileged view")
        aux = []
        for j in range(k):
            strategy, text = mine.get(f"aux_{j}", (None, ""))
            if strategy is None:
                raise ValueError(f"contexts: example {row['id']!r} has no view aux_{j} "
                                 f"(agreement.num_views={k})")
            if strategy != cfg.agreement.strategy:
                raise ValueError(f"contexts: view aux_{j} of {row['id']!r} was built with strategy "
                                 f"{strategy!r}, agreement.strategy is {cfg.agreement.strategy!r}")
            aux.append(text)
        negs: tuple[str, ...] = ()
        if cfg.contrastive.weight > 0:
            negs = tuple(text for view, (_, text) in sorted(mine.items())
                         if view.startswith("negative_") and (row["id"], int(view.split("_")[1])) in allowed)
            no_negative += not negs
        items.append(TrainItem(row["id"], row["dataset"], row["prompt"], row["reference"],
                               mine["privileged"][1], tuple(aux), negs))
    if no_negative:
        if no_negative == len(items):
            raise ValueError(f"contrastive: no example has a negative view from sources "
                             f"{list(cfg.contrastive.sources)}")
        log.warning("contrastive: %d of %d examples have no negative view; their tokens get no "
                    "contrastive term", no_negative, len(items))
    return items


def step_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the examples of optimizer step `step` (1-based): a seeded permutation per epoch."""
    out = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, n)
        out.append(_permutation(n, seed, epoch)[offset])
    return out


_PERMS: dict[tuple[int, int, int], list[int]] = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _PERMS:
        if len(_PERMS) > 64:
            _PERMS.clear()
        order = list(range(n))
        random.Random(f"order:{seed}:{epoch}").shuffle(order)
        _PERMS[key] = order
    return _PERMS[key]


class PromptEncoder:
    """Chat-templated prompt ids with the length policy applied; never truncates silently."""

    def __init__(self, tokenizer, max_tokens: int, policy: str) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.policy = policy
        self._cache: dict[str, tuple[Tensor, bool]] = {}
        self.uses_truncated = 0
        """Truncated prompts handed out so far (each use counts)."""

    def __call__(self, text: str) -> list[int]:
        if text not in self._cache:
            ids = chat_ids(self.tokenizer, text)
            cut = len(ids) > self.max_tokens
            if cut:
                if self.policy == "error":
                    raise PromptTooLong(f"a training prompt has {len(ids)} tokens > rollout.max_prompt_tokens="
                                        f"{self.max_tokens} (raise the limit or set "
                                        f"rollout.on_long_prompt=truncate_left): {text[:60]!r}…")
                ids = ids[-self.max_tokens:]
            self._cache[text] = (torch.tensor(ids, dtype=torch.int32), cut)
        ids, cut = self._cache[text]
        self.uses_truncated += cut
        return ids.tolist()

    def prepare(self, texts: list[str]) -> int:
        """Encode every text once up front (fail fast); returns how many exceed the limit."""
        before = self.uses_truncated
        for t in texts:
            self(t)
        cut = self.uses_truncated - before
        self.uses_truncated = before
        if cut:
            log.warning("%d of %d training prompts exceed %d tokens; they are truncated from the left "
                        "(counted in train/prompt/truncated)", cut, len(set(texts)), self.max_tokens)
        return cut


@dataclass
class Packed:
    """[left-padded prompt; right-padded completion] rows."""

    ids: Tensor  # (R, W+T)
    attn: Tensor  # (R, W+T)
    width: int
    """W, the padded prompt width (completion token t is predicted at column W−1+t)."""

    def to(self, device: torch.device | str) -> Packed:
        return Packed(self.ids.to(device), self.attn.to(device), self.width)


def pack(prompts: list[list[int]], tokens: Tensor, lengths: Tensor, pad_id: int) -> Packed:
    """Pack prompt ids (R lists) with completion tokens (R, T) of `lengths` (R,) real tokens."""
    rows, steps = tokens.shape
    width = max(len(p) for p in prompts)
    ids = torch.full((rows, width + steps), pad_id, dtype=torch.long)
    attn = torch.zeros((rows, width + steps), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):width] = torch.tensor(p, dtype=torch.long)
        attn[r, width - len(p):width] = 1
    ids[:, width:] = tokens
    attn[:, width:] = (torch.arange(steps)[None, :] < lengths[:, None]).long()
    return Packed(ids, attn, width)


def pad_completions(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists into (R, T) and their lengths (R,); T >= 1."""
    steps = max(1, max(len(s) for s in seqs))
    tokens = torch.full((len(seqs), steps), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            tokens[r, :len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, torch.tensor([len(s) for s in seqs], dtype=torch.long)
