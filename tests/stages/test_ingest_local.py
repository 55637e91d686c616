"""The `local` adapter (your own files with a column mapping) and IngestConfig validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import schemas
from stages.ingest import IngestConfig, IngestError, run
from unisd.configtools import ConfigError, build

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"
MCQA_COLUMNS = {"id": "qid", "prompt": "question", "options": "opa,opb,opc,opd", "answer": "correct",
                "rationale": "explanation"}


def load(path: Path | str, family: str, **kw) -> list[dict]:
    table = run(IngestConfig(dataset="local", path=str(path), family=family, **kw), Path("."))["examples"]
    assert table.schema == schemas.EXAMPLES.schema
    return table.to_pylist()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_mcqa_with_column_mapping_and_split_column() -> None:
    rows = {r["id"]: r for r in load(FIXTURES / "local_mcqa.csv", "mcqa", columns=MCQA_COLUMNS)}
    assert set(rows) == {"local_mcqa/q1", "local_mcqa/q2", "local_mcqa/q3", "local_mcqa/q4"}
    assert [rows[f"local_mcqa/q{i}"]["split"] for i in range(1, 5)] == ["train", "train", "test", "test"]
    assert rows["local_mcqa/q4"]["answer"] == "B"  # given as the option text "Six"
    q1 = rows["local_mcqa/q1"]
    assert q1["options"] == ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"] and q1["answer"] == "B"
    assert q1["reference"] == "Reasoning: Plants fix carbon dioxide into sugars.\nAnswer: B"
    assert q1["prompt"].startswith("Answer the following multiple-choice question.")
    assert q1["dataset"] == "local_mcqa"


def test_code_family_derives_the_entry_point_and_name_overrides_the_label() -> None:
    columns = {"prompt": "task", "reference": "solution", "tests": "test"}
    rows = load(FIXTURES / "local_code.jsonl", "code", columns=columns, name="mycode", test_fraction=1.0)
    assert sorted(r["answer"] for r in rows) == ["add", "is_even", "last"]
    assert all(r["id"].startswith("mycode/") and r["dataset"] == "mycode" and r["split"] == "test"
               for r in rows)
    add = next(r for r in rows if r["answer"] == "add")
    assert add["prompt"] == "Write a function add(a, b) that returns the sum of a and b."
    assert add["tests"].startswith("assert add(1, 2) == 3")


def test_math_free_and_tool_families(tmp_path: Path) -> None:
    math_rows = load(write_jsonl(tmp_path / "m.jsonl", [{"prompt": "2+3?", "answer": 5, "rationale": "add"}]),
                     "math")
    assert math_rows[0]["answer"] == "5" and math_rows[0]["reference"] == "Reasoning: add\nAnswer: 5"
    free = load(write_jsonl(tmp_path / "f.jsonl", [{"prompt": "Name a colour.", "answer": "red"}]), "free")
    assert free[0]["prompt"] == "Name a colour." and free[0]["reference"] == "Answer: red"
    steps = [{"action": "lookup", "action_input": {"q": "x"}}]
    tool = load(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Find x.", "reference": "Action: lookup",
                                                    "tests": steps}]), "tool")
    assert json.loads(tool[0]["tests"]) == steps and json.loads(tool[0]["answer"]) == ["lookup"]


def test_parquet_with_list_options_and_integer_answer(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mc.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "Pick the even number.", "options": ["3", "4", "5"], "answer": 1, "meta": '{"src": "x"}'},
        {"prompt": "Pick the odd number.", "options": ["2", "4", "7"], "answer": 2, "meta": None},
    ]), path)
    rows = {r["answer"]: r for r in load(path, "mcqa")}
    assert set(rows) == {"B", "C"} and json.loads(rows["B"]["meta"]) == {"src": "x"}


@pytest.mark.parametrize(("row", "message"), [
    ({"answer": "B", "options": ["a", "b"]}, r"line 2: missing column 'question' \(field prompt"),
    ({"question": "Q?", "answer": "E", "options": ["a", "b", "c", "d"]},
     r"line 2: column 'answer': answer 'E' is not one of the options A-D"),
    ({"question": "Q?", "answer": 7, "options": ["a", "b"]}, r"line 2: answer index 7 is out of range"),
    ({"question": "  ", "answer": "A", "options": ["a", "b"]},
     r"line 2: column 'question' \(field prompt\) is empty"),
    ({"question": "Q?", "answer": "A", "options": "[a, b"}, r"line 2: column 'options' .* not a JSON list"),
    ({"question": "Q?", "answer": "A", "options": ["a", ""]}, r"line 2: .*option B is empty"),
    ({"question": "Q?", "answer": "maybe", "options": ["a", "b"]}, r"line 2: .*'maybe' is not a letter"),
])
def test_bad_rows_are_one_line_errors_naming_row_and_column(tmp_path: Path, row: dict, message: str) -> None:
    good = {"question": "Fine?", "answer": "A", "options": ["yes", "no"]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(IngestError, match=message) as err:
        load(path, "mcqa", columns={"prompt": "question"})
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_csv_missing_column_error_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["q", "a"], ["What is 1+1?", "2"]])
    with pytest.raises(IngestError, match=r"csv, line 2: missing column 'question' .*columns present: a, q"):
        load(path, "math", columns={"prompt": "question"})


def test_empty_result_and_unreadable_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        load(tmp_path / "absent.jsonl", "math")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x", "answer": 1}\n{oops\n')
    with pytest.raises(IngestError, match="line 2: invalid JSON"):
        load(tmp_path / "broken.jsonl", "math")
    only_split = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "x", "answer": "1", "split": "extra"}])
    with pytest.raises(IngestError, match="no examples left"):
        load(only_split, "math", splits={"extra": "skip"})


def test_config_from_yaml_data_normalises_mappings_and_is_hashable() -> None:
    cfg = build(IngestConfig, {"dataset": "local", "path": "x.csv", "family": "mcqa", "columns": MCQA_COLUMNS,
                               "splits": {"dev": "validation"}, "math_tasks": ["chain_sum"]})
    assert cfg.source == "local" and cfg.splits == (("dev", "validation"),)
    assert dict(cfg.columns) == MCQA_COLUMNS and isinstance(cfg.columns, tuple) and hash(cfg)
    assert cfg == IngestConfig(dataset="local", path="x.csv", family="mcqa",
                               columns=tuple(MCQA_COLUMNS.items()), splits={"dev": "validation"},
                               math_tasks=("chain_sum",))


@pytest.mark.parametrize(("data", "message"), [
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"dataset": "scienceqa"}, "no bundled source; set source: hub, or source: local"),
    ({"dataset": "math", "source": "local", "path": "x"}, "use dataset: local"),
    ({"dataset": "gsm8k", "source": "local"}, "needs a path"),
    ({"dataset": "local", "path": "x.jsonl"}, "needs family"),
    ({"dataset": "mbpp", "source": "hub", "columns": {"prompt": "q"}}, "columns applies to dataset local"),
    ({"dataset": "local", "path": "x", "family": "math", "columns": {"question": "q"}},
     "unknown field 'question'"),
    ({"dataset": "gsm8k", "source": "hub", "splits": {"test": "holdout"}}, "unknown target 'holdout'"),
    ({"dataset": "humaneval", "test_fraction": 1.5}, "test_fraction"),
    ({"dataset": "humaneval", "limit": 0}, "limit"),
    ({"dataset": "humaneval", "family": "mcqa"}, "is family 'code'"),
])
def test_invalid_configs_are_rejected_before_any_work(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(IngestConfig, data)
