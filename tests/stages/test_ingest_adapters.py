"""Ingest adapters on small fixture files written in each dataset's real (hub) schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from stages.ingest import IngestConfig, IngestError, run
from stages.ingest.sources import read_local

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def load(dataset: str, path: Path | str, **kw) -> list[dict]:
    table = run(IngestConfig(dataset=dataset, source="local", path=str(path), **kw), Path("."))["examples"]
    assert table.schema == schemas.EXAMPLES.schema
    schemas.validate(table, schemas.EXAMPLES)
    return table.to_pylist()


def passes(program: str) -> bool:
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    return done.returncode == 0


def by_question(rows: list[dict]) -> dict[str, dict]:
    return {r["prompt"].split("Question: ", 1)[1].split("\n\n", 1)[0]: r for r in rows}


def test_scienceqa_drops_image_items_and_keeps_the_hint_as_context() -> None:
    rows = load("scienceqa", FIXTURES / "scienceqa.jsonl")
    assert len(rows) == 4 and not any("farthest north" in r["prompt"] for r in rows)
    pot = by_question(rows)["What is the volume of a large soup pot?"]
    assert "Context: Select the better estimate." in pot["prompt"]
    assert pot["prompt"].index("Context:") < pot["prompt"].index("A. 7 liters")
    assert pot["answer"] == "A" and pot["options"] == ["7 liters", "7 milliliters"]
    assert pot["reference"] == f"Reasoning: {pot['rationale']}\nAnswer: A" and "7 liters" in pot["rationale"]
    tense = by_question(rows)["Which tense does the sentence use?\nMona will print her name with care."]
    assert tense["answer"] == "B" and "Context:" not in tense["prompt"] and "C. past tense" in tense["prompt"]
    guide = next(r for r in rows if "guide words" in r["prompt"])
    assert guide["rationale"] is None and guide["reference"] == "Answer: A"


def test_gpqa_shuffles_options_per_item_with_the_seed() -> None:
    raw = {r["Record ID"]: r for r in records("gpqa.jsonl")}
    letters = set()
    for seed in range(6):
        rows = load("gpqa", FIXTURES / "gpqa.jsonl", seed=seed)
        assert rows == load("gpqa", FIXTURES / "gpqa.jsonl", seed=seed)
        for r in rows:
            src = raw[r["id"].split("/", 1)[1]]
            assert r["options"]["ABCD".index(r["answer"])] == src["Correct Answer"].strip()
            assert sorted(r["options"]) == sorted(src[k].strip() for k in (
                "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"))
            assert r["reference"].endswith(f"Answer: {r['answer']}") and r["rationale"] == src["Explanation"]
            letters.add(r["answer"])
    assert len(letters) >= 3


def test_cos_e_maps_the_answer_text_to_its_letter() -> None:
    rows = {r["id"]: r for r in load("cos_e", FIXTURES / "cos_e.jsonl")}
    atlas = rows["cos_e/02e821a3e53cb320790950aab4489e85"]
    assert atlas["answer"] == "D" and atlas["options"][3] == "atlas" and len(atlas["options"]) == 5
    assert atlas["reference"] == "Reasoning: an atlas is a book of maps\nAnswer: D"
    assert "E. oceans" in atlas["prompt"] and "one of A, B, C, D, or E" in atlas["prompt"]


def test_medmcqa_hub_schema_skips_unlabelled_items() -> None:
    rows = {r["id"]: r for r in load("medmcqa", FIXTURES / "medmcqa.jsonl")}
    assert len(rows) == 3 and not any("carcinoid" in r["prompt"] for r in rows.values())
    b12 = rows["medmcqa/e3d3c4e1-4fb2-45e7-9f88-247cc8f373b3"]
    assert b12["answer"] == "C" and b12["reference"].startswith("Reasoning: Vitamin B12")
    obesity = rows["medmcqa/5c38bea6-787a-44a9-b2df-88f4218ab914"]
    assert obesity["reference"] == "Answer: D" and obesity["rationale"] is None
    assert json.loads(obesity["meta"]) == {"choice_type": "multi", "subject": "Surgery"}


def test_native_splits_are_kept_and_mapped(tmp_path: Path) -> None:
    import datasets

    raw = records("medmcqa.jsonl")
    for r in raw:
        r["exp"] = r["exp"] or ""
        r["topic_name"] = r["topic_name"] or ""
    saved = tmp_path / "medmcqa_saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(raw[:2]),
        "validation": datasets.Dataset.from_list(raw[2:3]),
        "test": datasets.Dataset.from_list(raw[3:]),
    }).save_to_disk(str(saved))
    rows = load("medmcqa", saved)  # validation is MedMCQA's evaluation split; its test has no labels
    assert sorted(r["split"] for r in rows) == ["test", "train", "train"]
    assert json.loads(next(r for r in rows if r["split"] == "test")["meta"])["native_split"] == "validation"
    kept = load("medmcqa", saved, splits={"validation": "validation"})
    assert sorted(r["split"] for r in kept) == ["train", "train", "validation"]


def test_directory_of_split_files_in_hub_layout(tmp_path: Path) -> None:
    lines = (FIXTURES / "gsm8k.jsonl").read_text().splitlines()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.jsonl").write_text("\n".join(lines[:3]) + "\n")
    test_file = tmp_path / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(lines[3])]), test_file)
    rows = load("gsm8k", tmp_path, test_fraction=1.0)
    assert sorted(r["split"] for r in rows) == ["test", "train", "train", "train"]
    (tmp_path / "data" / "dev.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(IngestError, match="split 'dev' is not train, validation or test"):
        load("gsm8k", tmp_path)


def test_gsm8k_splits_off_the_final_answer_and_cleans_the_rationale() -> None:
    rows = {r["answer"]: r for r in load("gsm8k", FIXTURES / "gsm8k.jsonl")}
    assert set(rows) == {"72", "10", "1200", "5"}
    clips = rows["72"]
    assert clips["rationale"].startswith("Natalia sold 48/2 = 24 clips in May.")
    assert "<<" not in clips["rationale"]
    assert clips["reference"] == f"Reasoning: {clips['rationale']}\nAnswer: 72"
    assert "####" not in clips["prompt"] and 'Answer: <number>' in clips["prompt"]


def test_mbpp_prompt_hides_the_asserts_and_the_gold_passes_the_tests() -> None:
    rows = {r["id"]: r for r in load("mbpp", FIXTURES / "mbpp_full.jsonl")}
    assert set(rows) == {"mbpp/11", "mbpp/17", "mbpp/602", "mbpp/700"}
    for r in rows.values():
        assert "assert" not in r["prompt"] and f"def {r['answer']}(" in r["prompt"]
        assert "\r" not in r["reference"] + r["tests"]
        assert passes(r["reference"] + "\n" + r["tests"]), r["id"]
        assert not passes(r["tests"])  # the tests need the function
    assert "def remove_Occ(s, ch):" in rows["mbpp/11"]["prompt"]
    renamed = rows["mbpp/602"]
    assert renamed["answer"] == "first_repeated_char" and "def first_repeated_char(" in renamed["reference"]
    assert json.loads(renamed["meta"])["renamed_from"] == "first_Repeated_Char"
    circle = rows["mbpp/700"]
    assert circle["answer"] == "circle_area" and circle["tests"].startswith("import math\n\nassert")


def test_mbpp_sanitized_includes_test_imports() -> None:
    rows = {r["id"]: r for r in load("mbpp", FIXTURES / "mbpp_sanitized.jsonl")}
    assert rows["mbpp/139"]["tests"].startswith("import math\n\n")
    assert rows["mbpp/2"]["answer"] == "similar_elements"  # found inside set(...) in the asserts
    for r in rows.values():
        assert "assert" not in r["prompt"] and passes(r["reference"] + "\n" + r["tests"])


def test_tooluse_gold_steps_from_react_text_and_from_golden_answer() -> None:
    rows = {json.loads(r["meta"])["instruction"]: r for r in load("tooluse", FIXTURES / "tooluse.jsonl")}
    books = rows["Find two books by Ursula K. Le Guin and give me details of the first one."]
    assert json.loads(books["tests"]) == [
        {"action": "searchBooks", "action_input": {"query": "Ursula K. Le Guin", "limit": 2}},
        {"action": "getBookDetails", "action_input": {"book_id": "OL59800W"}},
    ]
    assert json.loads(books["answer"]) == ["searchBooks", "getBookDetails"]
    assert json.loads(books["meta"])["final_answer"].startswith("A Wizard of Earthsea")
    assert books["reference"].startswith("Thought: I should search") and books["prompt"].endswith(
        "give me details of the first one.")
    oslo = rows["Will it rain in Oslo over the next three days?"]
    assert json.loads(oslo["tests"]) == [{"action": "getForecast", "action_input": {"city": "Oslo"}}]
    assert oslo["reference"] == 'Action: getForecast\nAction Input: {"city": "Oslo"}'
    assert all(r["family"] == "tool" for r in rows.values())


def test_humaneval_hub_schema_file_matches_the_bundled_problems() -> None:
    local = load("humaneval", FIXTURES / "humaneval.jsonl")
    bundled = {r["id"]: r for r in run(IngestConfig(dataset="humaneval"), Path("."))["examples"].to_pylist()}
    assert [r["id"] for r in local] and all(r == bundled[r["id"]] for r in local)


def test_schema_errors_name_the_row_and_field(tmp_path: Path) -> None:
    raw = records("cos_e.jsonl")
    del raw[2]["choices"]
    path = tmp_path / "cos_e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    with pytest.raises(IngestError, match=r"cos_e.jsonl, line 3: missing field 'choices'"):
        load("cos_e", path)


def test_scienceqa_saved_dataset_with_real_image_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    image_mod = pytest.importorskip("PIL.Image")
    raw = records("scienceqa.jsonl")
    for r in raw:
        r["image"] = image_mod.new("RGB", (4, 4)) if r["image"] else None
    features = datasets.Features({
        **{k: datasets.Value("string") for k in raw[0] if k not in ("image", "choices", "answer")},
        "image": datasets.Image(), "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("int8"),
    })
    datasets.DatasetDict({"train": datasets.Dataset.from_list(raw, features=features)}).save_to_disk(
        str(tmp_path / "sqa"))
    rows = load("scienceqa", tmp_path / "sqa")
    assert len(rows) == 4 and {r["split"] for r in rows} == {"train"}
    assert not any("farthest north" in r["prompt"] for r in rows)
    images = [rec.data["image"] for rec in read_local(tmp_path / "sqa")]
    assert sum(isinstance(i, dict) and bool(i["bytes"]) for i in images) == 1  # never decoded


def test_hub_source_goes_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets.load_dataset` on a local folder in hub layout: the same call as for a hub id, offline."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    lines = (FIXTURES / "gsm8k.jsonl").read_text().splitlines()
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "train.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "repo" / "data" / "test.jsonl").write_text(lines[3] + "\n")
    cfg = IngestConfig(dataset="gsm8k", source="hub", path=str(tmp_path / "repo"), subset="default")
    rows = run(cfg, tmp_path)["examples"].to_pylist()
    assert sorted(r["split"] for r in rows) == ["test", "train", "train", "train"]
    missing = IngestConfig(dataset="gsm8k", source="hub", path=str(tmp_path / "absent"))
    with pytest.raises(IngestError, match=r"could not load .*absent.* \(subset 'main'\) from the hub"):
        run(missing, tmp_path)
