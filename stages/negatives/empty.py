"""Why a negatives source gave a dataset nothing: one warning per (dataset, source), naming the cause.

A source that yields no negatives for a dataset leaves the contrastive term without a bad teacher there,
which otherwise shows only as a weaker result. The usual causes are structural and can be named from
the items themselves: WordNet perturbs the gold reasoning, so choice and maths items without a rationale
get none and code items never do; an LLM whose every reply failed to parse or repeated the gold answer;
corruption rules that found nothing to change.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

from stages.negatives.answers import reasoning_of

log = logging.getLogger(__name__)


def wordnet_reason(items: list[dict[str, Any]]) -> str:
    """Why WordNet swaps produced nothing for these items."""
    families = Counter(it["family"] for it in items)
    if set(families) == {"code"}:
        return "code items get no WordNet negatives (swapping words in code changes nothing the tests see)"
    reasoned = [it for it in items if it["family"] in ("mcqa", "math") and reasoning_of(it)]
    needs_reasoning = sum(families[f] for f in ("mcqa", "math"))
    if needs_reasoning and not reasoned and needs_reasoning == len(items):
        return (f"none of its {needs_reasoning} choice/maths items has a rationale, and WordNet perturbs the gold "
                "reasoning (add a rationale column, or use the llm or corrupt source)")
    return "no WordNet swap changed any text (its words are protected answer words or not in WordNet)"


def reason(source: str, items: list[dict[str, Any]], stats: Counter) -> str:
    """Why ``source`` gave ``items`` (one dataset's train items) no negatives."""
    if source == "wordnet":
        return wordnet_reason(items)
    if source == "llm":
        counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "no counters"
        return f"every reply was unparsable, a duplicate or the gold answer ({counts})"
    return "no corruption rule applied to its references"


def warn_empty(enabled: list[str], items: list[dict[str, Any]], kept: list[tuple[str, str]],
               stats: dict[str, Counter]) -> list[str]:
    """Log (and return) one warning per dataset and enabled source that kept no negative.

    ``kept`` holds the (item id, source) of every negative kept."""
    dataset_of = {it["id"]: it["dataset"] for it in items}
    got = Counter((dataset_of.get(i), s) for i, s in kept)
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by_dataset[it["dataset"]].append(it)
    out = []
    for dataset, mine in sorted(by_dataset.items()):
        for source in enabled:
            if got[(dataset, source)] == 0:
                msg = (f"negatives {source}: 0 negatives for dataset {dataset!r} ({len(mine)} train items): "
                       f"{reason(source, mine, stats.get(source, Counter()))}")
                expected = source == "wordnet" and all(it["family"] == "code" for it in mine)
                log.log(logging.INFO if expected else logging.WARNING, "%s", msg)
                out.append(msg)
    return out
