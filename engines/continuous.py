"""Continuous-batching generation: a drop-in `Generator` that keeps ``batch_size`` rows decoding.

`HFGenerator` runs ``model.generate`` on static batches, so a batch lasts as long as its longest row;
on code prompts most steps then run with one or two live rows. Here a row leaves the batch as soon as
it ends (EOS, ``stop`` regex, ``max_new_tokens``) and the next pending prompt takes its slot.

Layout: each layer's keys/values live in one buffer (slots, kv_heads, capacity, head_dim). All slots
share the column window ``[start, end)``; a 2-D attention mask says which columns are real for each
slot (a prompt is right-aligned at the column where it joins, i.e. left padded) and positions are kept
per slot, so RoPE sees every row as in an unpadded run. Masked columns add exactly zero to attention,
so greedy outputs equal `HFGenerator`'s up to floating-point reduction order. New prompts are
prefilled together in groups of about `PREFILL_TOKENS` positions (left padded, only the last position
goes through the LM head; the tokens every prompt of the call starts with are prefilled once and
shared, see `engines.prefill`) and copied into free slots; a freed slot is reused in place, compacted
away when nothing is pending, and leading columns that are padding for every live slot are dropped by
moving ``start``. Pending prompts are taken longest
first, so a joining prompt always fits left of ``end`` without moving the buffers.

Sampling (Gumbel-max) draws its noise from a generator seeded by (seed, prompt index), so a prompt's
sampled completion depends neither on its batch neighbours nor on ``batch_size``.
Supported: decoder-only models with full attention everywhere (Llama, SmolLM2, Qwen2 without sliding
window, ...); sliding-window or linear-attention layers would need their own slot bookkeeping.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig
from engines.prefill import Prefill, SharedPrefix, prefill
from engines.stops import stop_ids

log = logging.getLogger(__name__)

SPARE_COLUMNS = 64
"""Free columns added right of ``end`` whenever the slot buffers are (re)allocated."""
PREFILL_TOKENS = 1024
"""Padded token positions per prefill forward. Joining prompts are prefilled in groups of about this
size: on 2 AVX2 cores 64 MedMCQA prompts (~105 tokens each after the shared prefix) prefilled at 153
tokens/s in one forward and at 413 tokens/s in groups of 8; HumanEval's longest 64 at 378 tokens/s in
groups of 16 and 450 in groups of 4."""


@dataclass
class _Window:
    """Columns ``[start, end)`` of the slot buffers holding cached tokens; shared by every layer."""

    start: int = 0
    end: int = 0


class _SlotLayer(CacheLayerMixin):
    """One layer's cache for the model's forward: writes new keys/values at column ``end``.

    The window moves only after the whole forward pass, so every layer writes the same columns and
    returns the same live range ``[start, end + n)``.
    """

    is_sliding = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, window: _Window):
        super().__init__()
        self.keys, self.values, self.window = keys, values, window  # (S, H, C, D) each
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # buffers are allocated by `_Slots`

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end, n = self.window.start, self.window.end, key_states.shape[-2]
        self.keys[:, :, end:end + n] = key_states
        self.values[:, :, end:end + n] = value_states
        return self.keys[:, :, start:end + n], self.values[:, :, start:end + n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.window.end - self.window.start

    def get_max_length(self) -> int:
        return -1


@dataclass
class _Row:
    index: int
    """Position of the prompt in the caller's list."""
    prompt_tokens: int
    rng: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    seconds: float = 0.0
    stop_id: int | None = None


class _Slots:
    """The live decode batch: slot buffers per layer, attention mask, positions, last tokens, rows."""

    def __init__(self, like: Prefill, device: torch.device):
        self.device = device
        self.keys = [k.new_zeros((0, k.shape[1], 0, k.shape[3])) for k in like.keys]  # (S, H, C, D)
        self.values = [v.new_zeros((0, v.shape[1], 0, v.shape[3])) for v in like.values]
        self.mask = torch.zeros((0, 0), dtype=torch.bool, device=device)  # (S, C)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # (S,) next position per slot
        self.tokens = torch.zeros(0, dtype=torch.long, device=device)  # (S,) last sampled token per slot
        self.rows: list[_Row | None] = []
        self.window = _Window()
        self.cache = Cache(layers=[])

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def live(self) -> int:
        return sum(r is not None for r in self.rows)

    def relayout(self, keep: list[int], extra: int, lead: int) -> None:
        """New buffers holding slots ``keep`` plus ``extra`` empty ones, with ``end >= lead``."""
        start, end = self.window.start, self.window.end
        width = end - start
        off = max(lead - width, 0)
        cap, n = off + width + SPARE_COLUMNS, len(keep)
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)

        def move(old: torch.Tensor) -> torch.Tensor:  # (S, H, C, D) -> (n + extra, H, cap, D)
            new = old.new_zeros((n + extra, old.shape[1], cap, old.shape[3]))
            new[:n, :, off:off + width] = old[:, :, start:end].index_select(0, idx)
            return new

        self.cache = Cache(layers=[])  # one layer at a time: the old buffers go as the new ones come
        for i in range(len(self.keys)):
            self.keys[i], self.values[i] = move(self.keys[i]), move(self.values[i])
        mask = torch.zeros((n + extra, cap), dtype=torch.bool, device=self.device)
        mask[:n, off:off + width] = self.mask[:, start:end].index_select(0, idx)
        self.mask = mask
        self.positions = torch.cat([self.positions.index_select(0, idx), self.positions.new_zeros(extra)])
        self.tokens = torch.cat([self.tokens.index_select(0, idx), self.tokens.new_zeros(extra)])
        self.rows = [self.rows[i] for i in keep] + [None] * extra
        self.window = _Window(off, off + width)
        self.cache = Cache(layers=[_SlotLayer(k, v, self.window) for k, v in zip(self.keys, self.values)])

    def admit(self, pf: Prefill, picks: list[int], rows: list[_Row], tokens: list[int]) -> None:
        """Copy prefilled rows ``picks`` into free slots, right-aligned at column ``end``."""
        free = [s for s, r in enumerate(self.rows) if r is None]
        lead = max(pf.lengths[j] for j in picks)
        if len(picks) > len(free) or lead > self.window.end:
            self.relayout(list(range(self.size)), max(len(picks) - len(free), 0), lead)
            free = [s for s, r in enumerate(self.rows) if r is None]
        end = self.window.end
        for slot, j, row, token in zip(free, picks, rows, tokens):
            n = pf.lengths[j]
            pf.write(j, self.keys, self.values, slot, end)
            self.mask[slot] = False
            self.mask[slot, end - n:end] = True
            self.positions[slot], self.tokens[slot], self.rows[slot] = n, token, row
            self.window.start = min(self.window.start, end - n)
        self.trim()

    def release(self, slots: list[int]) -> None:
        for s in slots:
            self.rows[s] = None
            self.mask[s] = False

    def compact(self) -> None:
        """Drop empty slots (nothing pending will reuse them)."""
        self.relayout([s for s, r in enumerate(self.rows) if r is not None], 0, 0)
        self.trim()

    def trim(self) -> None:
        """Move ``start`` past leading columns that are padding for every slot."""
        used = self.mask[:, self.window.start:self.window.end].any(0)
        if used.any():
            self.window.start += int(used.int().argmax())

    def step(self, model) -> torch.Tensor:
        """Feed every slot's last token; returns next-token logits (S, V) in float32."""
        if self.window.end >= self.mask.shape[1]:
            self.relayout(list(range(self.size)), 0, 0)
        start, end = self.window.start, self.window.end
        self.mask[:, end] = True
        out = model(input_ids=self.tokens[:, None], attention_mask=self.mask[:, start:end + 1],
                    position_ids=self.positions[:, None], past_key_values=self.cache, use_cache=True,
                    logits_to_keep=1)
        self.window.end += 1
        self.positions += 1
        return out.logits[:, -1].float()


def prefill_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive positions of ``lengths`` grouped so that each group's padded size (members × longest
    member) stays within ``budget`` tokens; a prompt longer than the budget is a group of its own."""
    groups: list[list[int]] = []
    width = 0
    for j, n in enumerate(lengths):
        if groups and max(width, n) * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(j)
            width = max(width, n)
        else:
            groups.append([j])
            width = n
    return groups


def row_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of prompt ``index``: independent of batch composition and batch size."""
    digest = hashlib.sha256(f"unisd-sampling:{seed}:{index}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_tokens(logits: torch.Tensor, rngs: Sequence[torch.Generator | None],
                  temperature: float, top_p: float) -> list[int]:
    """Greedy (temperature 0) or nucleus sampling of one token per row of ``logits`` (S, V).

    Sampling is Gumbel-max: argmax(logits / T + g) with g ~ Gumbel(0, 1) drawn from the row's own
    generator (V numbers per row and token). It is an exact draw from softmax(logits / T), and unlike
    CDF inversion a last-bit change of the logits (another batch width) flips the draw only when the
    top two perturbed scores tie within that change, so per-row seeds give the same text at any batch size.
    """
    if temperature == 0:
        return logits.argmax(-1).tolist()
    scores = logits / temperature  # (S, V)
    if top_p < 1:
        probs, order = torch.softmax(scores, dim=-1).sort(dim=-1, descending=True)
        keep = (probs.cumsum(-1) - probs) < top_p  # tokens whose more likely tokens hold < top_p of the mass
        scores = scores.masked_fill(~torch.zeros_like(keep).scatter(1, order, keep), -math.inf)
    uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=g.device) for g in rngs])
    gumbel = -torch.log(-torch.log(uniform))  # (S, V); u = 0 gives -inf, never picked
    return (scores + gumbel.to(scores.device)).argmax(-1).tolist()


@dataclass
class ContinuousGenerator:
    """Same fields and `generate` semantics as `HFGenerator`, with rows joining as others finish.

    ``Completion.seconds`` is the row's share of wall time: its prefill divided by the prompts prefilled
    with it, plus each decode step divided by the rows live in that step (they sum to the total).
    """

    model: object
    tokenizer: object
    batch_size: int = 16
    max_prompt_tokens: int = 2048
    on_long_prompt: Literal["error", "truncate_left"] = "error"
    system: str | None = None
    stats: PromptStats = field(default_factory=PromptStats)
    share_prefix: bool = True
    """Prefill the tokens every prompt of a call starts with once (`engines.prefill.SharedPrefix`)."""
    streams: ClassVar[bool] = True
    """`generate` takes ``on_complete`` and reports each completion as it ends."""

    encode = HFGenerator.encode  # same chat template, length check and counted left truncation

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None,
                 on_complete: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Completions of ``prompts`` in their order; ``on_complete(index, completion)`` is called as each
        one ends (in the order they end), so a caller can save or score them while the others decode."""
        encoded = self.encode(prompts)
        run = _Run(self, encoded, sampling, progress, on_complete)
        with torch.inference_mode():
            return run.loop()


class _Run:
    """State of one `generate` call: pending prompts (longest first), live slots, results."""

    def __init__(self, gen: ContinuousGenerator, encoded: list[list[int]], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None, on_complete: Callable[[int, Completion], None] | None):
        self.model, self.tokenizer, self.batch_size = gen.model, gen.tokenizer, gen.batch_size
        self.encoded, self.sampling, self.progress, self.on_complete = encoded, sampling, progress, on_complete
        self.stop = re.compile(sampling.stop) if sampling.stop else None
        self.eos = gen.tokenizer.eos_token_id
        self.stops = frozenset(stop_ids(gen.tokenizer))
        pad = gen.tokenizer.pad_token_id
        self.pad = self.eos if pad is None else pad
        self.device = next(gen.model.parameters()).device
        self.pending = deque(sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i)))
        self.results: list[Completion | None] = [None] * len(encoded)
        self.slots: _Slots | None = None
        self.share_prefix = gen.share_prefix
        self.prefix: SharedPrefix | None = None

    def loop(self) -> list[Completion]:
        while self.pending or (self.slots is not None and self.slots.size):
            self.refill()
            if self.slots is None or not self.slots.size:
                continue
            t0 = time.perf_counter()
            logits = self.slots.step(self.model)
            rows: list[_Row] = self.slots.rows  # type: ignore[assignment]  # no empty slot after refill
            tokens = sample_tokens(logits, [r.rng for r in rows], self.sampling.temperature, self.sampling.top_p)
            share = (time.perf_counter() - t0) / len(rows)
            done = []
            for s, (row, token) in enumerate(zip(rows, tokens)):
                row.seconds += share
                if self.advance(row, token):
                    done.append(s)
            self.slots.tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
            self.report([rows[s] for s in done])
            self.slots.release(done)
        return self.results  # type: ignore[return-value]

    def refill(self) -> None:
        """Fill free slots from the pending prompts; drop slots nothing will fill."""
        while self.pending:
            live = self.slots.live if self.slots is not None else 0
            want = min(self.batch_size - live, len(self.pending))
            if want <= 0:
                break
            self.join([self.pending.popleft() for _ in range(want)])
        if self.slots is not None and self.slots.live < self.slots.size:
            self.slots.compact()

    def join(self, indices: list[int]) -> None:
        """Prefill prompts ``indices`` (in groups of at most `PREFILL_TOKENS` padded positions), take their
        first tokens and admit those still running."""
        if self.share_prefix:  # once, at the first join: every prompt of the call is known
            self.share_prefix, self.prefix = False, SharedPrefix.build(self.model, self.encoded, self.device)
        shared = self.prefix.length if self.prefix is not None else 0
        for group in prefill_groups([len(self.encoded[i]) - shared for i in indices], PREFILL_TOKENS):
            self.join_group([indices[j] for j in group])

    def join_group(self, indices: list[int]) -> None:
        t0 = time.perf_counter()
        pf = prefill(self.model, [self.encoded[i] for i in indices], self.pad, self.device, self.prefix)
        rng = self.sampling.temperature > 0
        rows = [_Row(i, len(self.encoded[i]), row_generator(self.sampling.seed, i, self.device) if rng else None)
                for i in indices]
        tokens = sample_tokens(pf.logits, [r.rng for r in rows], self.sampling.temperature, self.sampling.top_p)
        picks = [j for j, (row, token) in enumerate(zip(rows, tokens)) if not self.advance(row, token)]
        if picks:
            if self.slots is None:
                self.slots = _Slots(pf, self.device)
            self.slots.admit(pf, picks, [rows[j] for j in picks], [tokens[j] for j in picks])
        share = (time.perf_counter() - t0) / len(rows)
        for row in rows:
            row.seconds += share
        self.report([row for j, row in enumerate(rows) if j not in picks])

    def advance(self, row: _Row, token: int) -> bool:
        """Append ``token`` to ``row``; True when the row has ended (EOS, stop regex, length limit)."""
        if token in self.stops:
            row.finished, row.stop_id = True, token
            return True
        row.token_ids.append(token)
        if self.stop is not None and self.stop.search(self.tokenizer.decode(row.token_ids, skip_special_tokens=True)):
            row.finished = True
            return True
        return len(row.token_ids) >= self.sampling.max_new_tokens

    def report(self, rows: list[_Row]) -> None:
        for row in rows:
            text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
            done = Completion(text, row.token_ids, row.prompt_tokens, row.finished, row.seconds, row.stop_id)
            self.results[row.index] = done
            if self.on_complete is not None:
                self.on_complete(row.index, done)
        if rows and self.progress:
            self.progress(len(rows))
