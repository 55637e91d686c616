"""Retrieval stage: train-only donors, no self or duplicate neighbours, index files, index kinds."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

import schemas
from stages import retrieval
from stages.retrieval import RetrievalConfig, RetrievalError, embedded_text, normalise_text
from stages.retrieval.embed import EMBEDDED_EMBEDDER, SentenceTransformerEmbedder, embedder_fingerprint
from stages.retrieval.index import default_nlist
from storage import StageSpec, Workspace, artifact_key

TRAIN = [
    "What gas do plants absorb from the air?",
    "Which planet is the largest in the solar system?",
    "How many legs does a spider have?",
    "What is the boiling point of water at sea level?",
    "Which organ pumps blood through the body?",
    "What do bees make from nectar?",
]


def example(i: str, prompt: str, split: str = "train", dataset: str = "d", meta: dict | None = None) -> dict:
    return {"id": f"{dataset}/{i}", "dataset": dataset, "split": split, "family": "free", "prompt": prompt,
            "reference": "Answer: x", "answer": "x", "meta": json.dumps(meta) if meta else None}


def table(rows: list[dict]) -> pa.Table:
    return schemas.conform(rows, schemas.EXAMPLES)


@pytest.fixture(scope="module")
def embedder():
    return SentenceTransformerEmbedder.load(EMBEDDED_EMBEDDER, device="cpu")


def neighbours(out: pa.Table) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for r in sorted(out.to_pylist(), key=lambda r: (r["id"], r["rank"])):
        got.setdefault(r["id"], []).append(r["neighbor_id"])
    return got


def test_every_item_gets_k_train_neighbours_never_itself(embedder, tmp_path):
    rows = [example(str(i), p) for i, p in enumerate(TRAIN)]
    rows += [example("t0", "Which gas do plants take in from the air?", "test"),
             example("t1", "Which gas is absorbed by plants from air?", "test")]
    ws = Workspace.create(tmp_path / "ws")
    out = retrieval.run(RetrievalConfig(k=3), table(rows), ws, embedder)["neighbors"]
    schemas.validate(out, schemas.NEIGHBORS)
    got = neighbours(out)
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    assert set(got) == {r["id"] for r in rows}
    for qid, ids in got.items():
        assert len(ids) == 3 and qid not in ids and set(ids) <= train_ids
    assert got["d/t0"][0] == "d/0" and got["d/t1"][0] == "d/0"  # the plant question, not the other test item
    for qid in got:
        scores = [r["score"] for r in out.to_pylist() if r["id"] == qid]
        assert scores == sorted(scores, reverse=True)
    assert (ws.files / "index.faiss").exists()
    index = faiss.read_index(str(ws.files / "index.faiss"))
    ids = json.loads((ws.files / "index_ids.json").read_text())["ids"]
    assert index.ntotal == len(ids) == len(TRAIN) and set(ids) == train_ids


def test_duplicates_are_never_neighbours_and_search_deepens(embedder):
    query = "What gas do plants absorb from the air?"
    rows = [example("q", query)]
    rows += [example(f"dup{i}", "  what GAS do plants absorb from the   air? ") for i in range(8)]
    rows += [example(str(i), p) for i, p in enumerate(TRAIN[1:])]
    got = neighbours(retrieval.run(RetrievalConfig(k=3), table(rows), embedder=embedder)["neighbors"])
    assert not any(n.startswith("d/dup") or n == "d/q" for n in got["d/q"])
    assert len(got["d/q"]) == 3  # 8 duplicates crowd the first 2k+1 hits; the search went deeper
    for dup in (f"d/dup{i}" for i in range(8)):
        assert "d/q" not in got[dup] and not any(n.startswith("d/dup") for n in got[dup])
    keys = [normalise_text(r["prompt"]) for r in rows]
    by_id = dict(zip((r["id"] for r in rows), keys))
    for ids in got.values():
        assert len({by_id[i] for i in ids}) == len(ids)  # one donor per distinct prompt


def test_donors_stay_within_their_dataset(embedder):
    rows = [example(str(i), p, dataset="a") for i, p in enumerate(TRAIN[:3])]
    rows += [example(str(i), p, dataset="b") for i, p in enumerate(TRAIN[3:])]
    got = neighbours(retrieval.run(RetrievalConfig(k=5), table(rows), embedder=embedder)["neighbors"])
    for qid, ids in got.items():
        assert len(ids) == 2 and all(n.split("/")[0] == qid.split("/")[0] for n in ids)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_match_exact_on_a_small_pool(embedder, kind):
    rows = [example(str(i), p) for i, p in enumerate(TRAIN)] + [example("t", "Which animal has eight legs?", "test")]
    exact = retrieval.run(RetrievalConfig(k=2), table(rows), embedder=embedder)["neighbors"]
    approx = retrieval.run(RetrievalConfig(k=2, index=kind), table(rows), embedder=embedder)["neighbors"]
    assert neighbours(approx) == neighbours(exact)
    assert np.allclose(approx.column("score").to_numpy(), exact.column("score").to_numpy(), atol=1e-5)


def test_meta_text_field_and_fallback():
    ex = example("0", "long prompt with API docs", meta={"instruction": "weather in Paris?"})
    assert embedded_text(ex, "meta.instruction") == "weather in Paris?"
    assert embedded_text(example("1", "plain"), "meta.instruction") == "plain"
    assert embedded_text(ex, "prompt") == "long prompt with API docs"


def test_no_train_items_is_an_error(embedder):
    rows = [example("0", TRAIN[0], "test"), example("1", TRAIN[1], "test")]
    with pytest.raises(RetrievalError, match="no train-split examples"):
        retrieval.run(RetrievalConfig(), table(rows), embedder=embedder)


def test_config_validation_and_cache_key():
    with pytest.raises(ValueError, match="text_field"):
        RetrievalConfig(text_field="reference")
    with pytest.raises(ValueError, match="index"):
        RetrievalConfig(index="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetrievalConfig(k=0)
    spec: StageSpec = retrieval.SPEC
    base = artifact_key(spec, RetrievalConfig(), {"examples": "a" * 64})
    assert base == artifact_key(spec, RetrievalConfig(), {"examples": "a" * 64})
    assert base != artifact_key(spec, RetrievalConfig(k=4), {"examples": "a" * 64})
    assert embedder_fingerprint(EMBEDDED_EMBEDDER).startswith(EMBEDDED_EMBEDDER + "@")
    assert default_nlist(100) == 2 and default_nlist(10) == 1
