"""A negatives source that yields nothing for a dataset says so, naming the dataset and the reason."""

from __future__ import annotations

import logging

import pytest

import schemas
from stages import negatives
from stages.ingest.formats import mcqa_prompt, reference
from stages.negatives import CorruptSource, LLMSource, NegativesConfig, WordNetSource

OPTIONS = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]
WORDNET_ONLY = NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=2),
                               corrupt=CorruptSource(num_per_item=0))


def item(i: int, dataset: str, rationale: str | None) -> dict:
    return {"id": f"{dataset}/{i}", "dataset": dataset, "split": "train", "family": "mcqa",
            "prompt": mcqa_prompt(f"Which gas do plants absorb (case {i})?", OPTIONS),
            "reference": reference("B", rationale), "rationale": rationale, "options": OPTIONS, "answer": "B"}


def test_wordnet_on_data_without_a_rationale_warns_naming_the_dataset(caplog: pytest.LogCaptureFixture) -> None:
    reasoned = "Plants absorb carbon dioxide and turn it into sugars using light energy."
    rows = [item(i, "bare", None) for i in range(3)] + [item(i, "explained", reasoned) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="stages.negatives"):
        table = negatives.run(WORDNET_ONLY, schemas.conform(rows, schemas.EXAMPLES))["negatives"]
    kept = {i.split("/")[0] for i in table.column("id").to_pylist()}
    assert kept == {"explained"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [("negatives wordnet: 0 negatives for dataset 'bare' (3 train items): none of its 3 "
                        "choice/maths items has a rationale, and WordNet perturbs the gold reasoning (add a "
                        "rationale column, or use the llm or corrupt source)")]


def test_no_warning_when_every_dataset_gets_negatives(caplog: pytest.LogCaptureFixture) -> None:
    rows = [item(i, "explained", "Plants absorb carbon dioxide and turn it into sugars.") for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="stages.negatives"):
        negatives.run(WORDNET_ONLY, schemas.conform(rows, schemas.EXAMPLES))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
