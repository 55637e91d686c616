"""Where a completion ends, for any Hugging Face causal LM: every end-of-sequence id the model declares.

A model's own ``generation_config.eos_token_id`` (an int or a list) says which tokens end a reply; the
tokenizer's ``eos_token`` is often only one of them. Qwen2 instruct models are the common case: the
tokenizer's eos is ``<|endoftext|>`` while the chat template closes each turn with ``<|im_end|>``, which
the generation config lists first. Stopping on the tokenizer's eos alone never stops such a model.

`prepare_tokenizer` (called by `engines.models.load_tokenizer`) works out, once per loaded tokenizer:

- ``stop_ids``: the chat template's end-of-turn token, then every id of the generation config (or the
  model config), then the tokenizer's (current) eos, without repeats. Every generator stops on any of them.
- ``end_of_turn``: the token that closes an assistant turn in the chat template (what follows the
  assistant's text when the template renders one), else the tokenizer's eos. It is what a finished
  completion and an SFT gold sequence end with, so training sees the same ending generation stops on.

A tokenizer without a chat template is refused with one line naming the fix (``model.chat_template:
plain``), unless the plain template is asked for: turns are then sent as their bare text, a system turn
first, separated by a blank line, and an assistant turn ends with the tokenizer's eos.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHAT_TEMPLATES = ("auto", "plain")
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
)
"""Bare text of every turn; an assistant turn ends with the eos token; no generation prompt."""
_MARK = "\x1fUNISD-END-OF-TURN-PROBE\x1f"


class NoChatTemplate(ValueError):
    """The tokenizer has no chat template and the plain one was not asked for."""


def as_ids(value: Any) -> list[int]:
    """An ``eos_token_id`` setting (None, an int or a list of ints) as a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def config_eos_ids(path: str) -> list[int]:
    """The eos ids a model folder declares: ``generation_config.json``, else ``config.json`` (none: [])."""
    for name in ("generation_config.json", "config.json"):
        f = Path(path) / name
        if f.is_file():
            try:
                ids = as_ids(json.loads(f.read_text()).get("eos_token_id"))
            except (ValueError, TypeError, AttributeError):
                continue
            if ids:
                return ids
    return []


def end_of_turn_id(tokenizer) -> int | None:
    """The first token the chat template puts after an assistant's text, when it is a special token."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe: no end-of-turn found
        return None
    if not isinstance(rendered, str) or _MARK not in rendered:
        return None
    tail = rendered.split(_MARK, 1)[1].strip(" \t")
    if not tail:
        return None
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", ())) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else None


def prepare_tokenizer(tokenizer, *, chat_template: str = "auto", model_eos: Any = None, where: str = "the model"):
    """Check or set the chat template and attach ``unisd_stop_ids`` / ``unisd_end_of_turn`` (returns it)."""
    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"model.chat_template must be one of {', '.join(CHAT_TEMPLATES)}, got {chat_template!r}")
    if chat_template == "plain":
        tokenizer.chat_template = PLAIN_TEMPLATE
    elif not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate(f"{where} has no chat template: set model.chat_template=plain to send prompts as "
                             "plain text, or use an instruct model")
    eos = tokenizer.eos_token_id
    turn = None if chat_template == "plain" else end_of_turn_id(tokenizer)
    tokenizer.unisd_stop_ids = tuple(dict.fromkeys(i for i in (turn, *as_ids(model_eos)) if i is not None))
    tokenizer.unisd_end_of_turn = turn
    if turn is None and eos is None:
        raise ValueError(f"{where}: the tokenizer has no eos token and the chat template no end-of-turn token")
    if turn is not None and turn != eos:
        log.info("%s: turns end with %r (id %d), not the tokenizer's eos %r; generation stops on ids %s",
                 where, tokenizer.convert_ids_to_tokens(turn), turn, tokenizer.eos_token,
                 list(stop_ids(tokenizer)))
    return tokenizer


def stop_ids(tokenizer) -> tuple[int, ...]:
    """Every id that ends a completion: the prepared ones (end-of-turn, the model's eos ids; computed from
    the template when the tokenizer was not prepared), then the tokenizer's current eos."""
    ids = getattr(tokenizer, "unisd_stop_ids", None)
    if ids is None:
        ids = (end_of_turn_id(tokenizer),)
    return tuple(dict.fromkeys(int(i) for i in (*ids, tokenizer.eos_token_id) if i is not None))


def end_of_turn(tokenizer) -> int:
    """The id a finished completion or a gold answer ends with: the chat template's end of turn, else the
    tokenizer's eos."""
    prepared = hasattr(tokenizer, "unisd_end_of_turn")
    turn = tokenizer.unisd_end_of_turn if prepared else end_of_turn_id(tokenizer)
    return int(tokenizer.eos_token_id if turn is None else turn)
