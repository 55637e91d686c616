"""Maths adapters: procedural problems from `reasoning-gym` (bundled, seeded) and GSM8K (hub).

The answer is the final number as a string and the reference is "Answer: N", preceded by
"Reasoning: ..." when a worked solution exists (GSM8K's text before "####" with its calculator
annotations <<a*b=c>> removed; reasoning-gym's ``answer_cot`` for the tasks that have one).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from stages.ingest.config import IngestConfig
from stages.ingest.formats import (
    Draft,
    RecordError,
    clean_number,
    math_prompt,
    need,
    normalise,
    optional_text,
    reference,
    text,
)
from stages.ingest.sources import Record

log = logging.getLogger(__name__)
_CALC = re.compile(r"<<[^>]*>>")


def generate_math(cfg: IngestConfig, cache_dir: Path) -> list[Record]:
    """`num_math_items` problems split evenly over `math_tasks`, each task generated with `seed`.

    A generator can repeat a question; a repeat is the same item again, so it is kept once (counted in
    the log) rather than failing the stage as a duplicate id."""
    import reasoning_gym

    n = len(cfg.math_tasks)
    sizes = [cfg.num_math_items // n + (i < cfg.num_math_items % n) for i in range(n)]
    records: list[Record] = []
    seen: set[str] = set()  # normalised questions: the id is a hash of the normalised prompt
    for task, size in zip(cfg.math_tasks, sizes, strict=True):
        if size == 0:
            continue
        try:
            items = list(reasoning_gym.create_dataset(task, size=size, seed=cfg.seed, **cfg.task_params(task)))
        except TypeError as e:  # an unknown setting of the task's config dataclass
            raise ValueError(f"math_params.{task}: {e}") from None
        except (KeyError, ValueError, AssertionError) as e:
            raise ValueError(f"math_tasks: reasoning-gym cannot generate {task!r}: {e}") from None
        for item in items:
            question = normalise(str(item.get("question", "")))
            if question in seen:
                continue
            seen.add(question)
            records.append(Record(None, len(records), {"task": task, **item}))
    if len(records) < cfg.num_math_items:
        log.info("math: %d repeated question(s) kept once", cfg.num_math_items - len(records))
    return records


def reasoning_gym_item(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """A reasoning-gym item: question, answer, metadata (source_index, answer_cot, difficulty, ...)."""
    question = text(need(rec, "question"), "question")
    answer = text(need(rec, "answer"), "answer")
    metadata = rec.get("metadata") or {}
    rationale = optional_text(metadata.get("answer_cot"))
    meta = {"task": rec.get("task"), "source_index": metadata.get("source_index"),
            "difficulty": metadata.get("difficulty")}
    # a direct-answer prompt asks for the answer line alone: its gold reference is that line (the worked
    # solution stays in `rationale`)
    shown = None if cfg.math_answer == "direct" else rationale
    return Draft(prompt=math_prompt(question, cfg.math_answer), reference=reference(answer, shown),
                 answer=answer, rationale=rationale, meta={k: v for k, v in meta.items() if v is not None})


def gsm8k(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`openai/gsm8k` (main): question, answer = worked solution + "#### N"."""
    question = text(need(rec, "question"), "question")
    solution = text(need(rec, "answer"), "answer")
    if "####" not in solution:
        raise RecordError("field 'answer' has no '#### <number>' final answer")
    worked, final = solution.rsplit("####", 1)
    answer = clean_number(final)
    rationale = optional_text(_CALC.sub("", worked))
    return Draft(prompt=math_prompt(question), reference=reference(answer, rationale), answer=answer,
                 rationale=rationale)
