"""Bring-your-own data: chat records, lettered options inside the prompt, evals/TRL/lm-eval answer fields,
every file format, and `data check` reading them exactly as ingest does."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.ingest import IngestConfig, IngestError, run
from stages.ingest.chat import answer_letter, options_value, split_lettered_options
from stages.ingest.check import check, render
from stages.ingest.formats import RecordError

QUESTION = "Which vitamin is supplied only by animal sources?"
OPTIONS = ["Vitamin C", "Vitamin B7", "Vitamin B12", "Vitamin D"]


def evals_record(style: str = "{L}. {o}", ideal: object = "C", question: str = QUESTION, **extra) -> dict:
    lines = [style.format(L="ABCD"[i], l="abcd"[i], o=o) for i, o in enumerate(OPTIONS)]
    user = "\n".join([question, *lines, "Answer with the letter only."])
    return {"input": [{"role": "system", "content": "You are a medical expert."},
                      {"role": "user", "content": user}], "ideal": ideal, **extra}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ingest(path: Path, family: str = "mcqa", **kw) -> list[dict]:
    return run(IngestConfig(dataset="local", path=str(path), family=family, **kw), Path("."))["examples"].to_pylist()


def test_chat_mcqa_file_with_options_in_the_user_turn_and_answer_in_ideal(tmp_path: Path) -> None:
    rows = ingest(write_jsonl(tmp_path / "evals.jsonl", [evals_record(), evals_record(ideal="a) Vitamin C",
                                                                                       question="Which is citrus?")]))
    by_answer = {r["answer"]: r for r in rows}
    assert set(by_answer) == {"C", "A"}
    row = by_answer["C"]
    assert row["options"] == OPTIONS
    assert f"Question: {QUESTION}\n\nA. Vitamin C\nB. Vitamin B7" in row["prompt"]
    assert "Answer with the letter only." not in row["prompt"]  # our template states the answer format
    meta = json.loads(row["meta"])
    assert meta["system"] == "You are a medical expert."
    assert meta["prompt_after_options"] == "Answer with the letter only."


@pytest.mark.parametrize("style", ["{L}. {o}", "{L}: {o}", "({L}) {o}", "{L}) {o}", "{l}) {o}"])
def test_every_lettered_option_style_inside_the_prompt(style: str) -> None:
    found = split_lettered_options(evals_record(style)["input"][1]["content"])
    assert found == (QUESTION, OPTIONS, "Answer with the letter only.")


def test_lettered_lines_must_run_from_a_in_order() -> None:
    assert split_lettered_options("Q?\nB. x\nC. y") is None
    assert split_lettered_options("A. x\nB. y") is None  # no question before the options
    assert split_lettered_options("Q?\nA. x\nB: y") is None  # one style per run
    assert split_lettered_options("Q?\nA. x\n(B) y") is None
    assert split_lettered_options("Q?\nAnswer: x\nA. x\nB. y") == ("Q?\nAnswer: x", ["x", "y"], "")


@pytest.mark.parametrize("value,expected", [
    (["x", "y"], ["x", "y"]),
    ('["x", "y"]', ["x", "y"]),
    ({"B": "y", "A": "x"}, ["x", "y"]),
    ({"label": ["B", "A"], "text": ["y", "x"]}, ["x", "y"]),  # ARC / CommonsenseQA hub layout
])
def test_options_as_list_mapping_or_label_text(value: object, expected: list[str]) -> None:
    assert options_value(value, "options") == expected


@pytest.mark.parametrize("raw,letter", [("b", "B"), ("(B)", "B"), ("B)", "B"), ("B.", "B"), ("b) Six", "B"),
                                        ("six", "B"), (1, "B"), ("1", "B"), (["B"], "B")])
def test_answer_forms(raw: object, letter: str) -> None:
    assert answer_letter(raw, ["Four", "Six", "Eight"], "ideal") == letter


def test_answer_out_of_range_names_the_column() -> None:
    with pytest.raises(RecordError, match="column 'target'.*A-C"):
        answer_letter("(D)", ["a", "b", "c"], "target")


def test_trl_messages_hub_choices_and_target_label_fields(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Pick the prime.\n(A) 4\n(B) 6\n(C) 7"},
                      {"role": "assistant", "content": "(C)"}]},
        {"question": "Largest?", "choices": {"label": ["A", "B"], "text": ["1", "9"]}, "target": "B"},
        {"question": "Smallest?", "choices": ["1", "9"], "label": 0},
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Even?\nA. 3\nB. 8"}]}],
         "completion": [{"role": "assistant", "content": "B"}], "answer": "B"},
    ]
    got = {r["prompt"].split("Question: ")[1].split("\n")[0]: (r["options"], r["answer"])
           for r in ingest(write_jsonl(tmp_path / "mixed.jsonl", rows))}
    assert got == {"Pick the prime.": (["4", "6", "7"], "C"), "Largest?": (["1", "9"], "B"),
                   "Smallest?": (["1", "9"], "A"), "Even?": (["3", "8"], "B")}


def test_free_family_chat_takes_the_final_assistant_turn_and_keeps_few_shot_turns(tmp_path: Path) -> None:
    rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                        {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}
    row = ingest(write_jsonl(tmp_path / "f.jsonl", [rec]), "free")[0]
    assert row["prompt"] == "User: 2+2?\n\nAssistant: 4\n\nUser: 3+3?" and row["answer"] == "6"


def _flat(i: int) -> dict:
    return {"id": f"q{i}", "question": f"Q{i}?\nA: yes\nB: no", "target": "B" if i % 2 else "A"}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "save_to_disk"])
def test_every_file_format_reads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    rows = [_flat(i) for i in range(4)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    got = sorted((r["id"], r["options"], r["answer"]) for r in ingest(path, name="d"))
    assert got == [(f"d/q{i}", ["yes", "no"], "B" if i % 2 else "A") for i in range(4)]


def test_column_mapping_still_wins_over_the_usual_names(tmp_path: Path) -> None:
    rec = {"q": "Which?\nA. x\nB. y", "question": "ignored?", "gold": "A", "answer": "B"}
    row = ingest(write_jsonl(tmp_path / "m.jsonl", [rec]), columns={"prompt": "q", "answer": "gold"})[0]
    assert row["answer"] == "A" and "Which?" in row["prompt"]


def test_data_check_shows_first_rows_and_every_rejected_row(tmp_path: Path) -> None:
    bad = [{"input": [{"role": "user", "content": "No options here"}], "ideal": "A"},
           evals_record(ideal="E"), {"input": [{"role": "assistant", "content": "hi"}], "ideal": "A"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [evals_record(), *bad])
    result = check(str(path))
    assert result.family == "mcqa" and result.guessed
    assert [r["answer"] for _, r in result.rows] == ["C"]
    assert [line.split(": ", 1)[0].rsplit(", ", 1)[1] for line in result.rejected] == ["line 2", "line 3", "line 4"]
    text = render(result)
    assert "options: A. Vitamin C | B. Vitamin B7 | C. Vitamin B12 | D. Vitamin D" in text
    assert "answer: C" in text and f"|Question: {QUESTION}" in text
    assert "1 would be ingested" in text and "3 rejected" in text
    assert "no lettered lines" in text and "'E' is not one of the options A-D" in text and "no user turn" in text
    # the same reader: ingest stops on the first row check rejected, with the same reason
    with pytest.raises(IngestError) as err:
        ingest(path)
    assert str(err.value) == result.rejected[0]
