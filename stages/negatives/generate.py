"""Driving the LLM source over one chunk of items: prompt, generate, parse, regenerate the failures.

All prompts of a chunk go to the generator together (it batches them); replies that do not parse are
sent again in the next round with a new sampling seed, up to ``max_attempts`` rounds. A generator
error is retried with exponential backoff (`stages.induction.llm.generate_with_backoff`); when retries
run out the error propagates and the chunks already saved survive for the next attempt.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engines.generation import Generator
from stages.induction.llm import generate_with_backoff
from stages.negatives.llm import Target, build_prompt, parse_reply, targets

if TYPE_CHECKING:
    from stages.negatives import LLMSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One negative before verification."""

    example: dict[str, Any]
    slot: int
    kind: str
    """What was asked for: the strategy, swap kind, target letter/number or bug kind."""
    text: str


def llm_candidates(cfg: LLMSource, chunk: list[dict[str, Any]], generator: Callable[[], Generator],
                   seed: int, chunk_index: int, stats: Counter) -> list[Candidate]:
    """Parsed LLM negatives of ``chunk`` (``generator`` is called only if there is something to ask)."""
    slots: list[tuple[dict[str, Any], Target]] = [
        (ex, t) for ex in chunk for t in targets(ex, cfg.num_per_item, seed)]
    stats["requested"] += len(slots)
    done: dict[int, str] = {}
    pending = list(range(len(slots)))
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        prompts = [build_prompt(*slots[i]) for i in pending]
        sampling = cfg.generator.sampling(seed=seed * 7919 + chunk_index * 131 + attempt)
        replies = generate_with_backoff(generator(), prompts, sampling, cfg.retries, cfg.backoff_s)
        failed = []
        for i, reply in zip(pending, replies):
            text = parse_reply(slots[i][0], reply.text)
            if text is None:
                stats["parse_failed"] += 1
                log.debug("negatives llm: unparsable reply for %s slot %d: %.160r", slots[i][0]["id"],
                          slots[i][1].slot, reply.text)
                failed.append(i)
            else:
                done[i] = text
        pending = failed
    stats["unfilled"] += len(pending)
    return [Candidate(slots[i][0], slots[i][1].slot, slots[i][1].goal, done[i]) for i in sorted(done)]
