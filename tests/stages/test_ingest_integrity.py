"""Ingest loses nothing silently: byte-order marks, duplicate ids, bad encodings, malformed files.

Every case writes a real file to tmp_path and runs the real stage (and, for the manifest count, the
real store), so each test fails if the reader drops a column, a row or a byte without saying so.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from stages import pipeline
from stages.ingest import REPORT_FILE, IngestConfig, IngestError, run
from storage import Store
from storage.artifact import Workspace

ROWS = [
    {"id": "q1", "question": "What is 1 + 1?", "answer": "2"},
    {"id": "q2", "question": "What is 2 + 2?", "answer": "4"},
    {"id": "q3", "question": "What is 3 + 3?", "answer": "6"},
]


def load(path: Path, **kw):
    cfg = IngestConfig(dataset="local", family="math", path=str(path), columns={"prompt": "question"},
                       test_fraction=0.5, **kw)
    return run(cfg, path.parent)["examples"]


def write_csv(path: Path, rows: list[dict], bom: bool = False, encoding: str = "utf-8") -> Path:
    lines = [",".join(rows[0])] + [",".join(str(v) for v in r.values()) for r in rows]
    data = ("\r\n".join(lines) + "\r\n").encode(encoding)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return path


def write_jsonl(path: Path, rows: list[dict], bom: bool = False) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return path


def one_line_error(path: Path, **kw) -> str:
    with pytest.raises(IngestError) as err:
        load(path, **kw)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_csv_with_a_bom_keeps_its_id_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "qa.csv", ROWS, bom=True)
    assert path.read_bytes().startswith(codecs.BOM_UTF8)
    ids = sorted(load(path).column("id").to_pylist())
    assert ids == ["qa/q1", "qa/q2", "qa/q3"]  # not hashes: the first column is still named `id`


def test_jsonl_with_a_bom_is_read(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS, bom=True)
    assert sorted(load(path).column("id").to_pylist()) == ["qa/q1", "qa/q2", "qa/q3"]


def test_duplicate_ids_are_an_error_naming_both_rows(tmp_path: Path) -> None:
    rows = [*ROWS, {"id": "q2", "question": "What is 9 + 9?", "answer": "18"}]
    path = write_csv(tmp_path / "qa.csv", rows)
    message = one_line_error(path)
    assert "duplicate id 'qa/q2'" in message
    assert f"{path}, line 3 and line 5" in message  # header is line 1: q2 is on line 3, its copy on line 5
    assert "on_duplicate: keep_first" in message


def test_duplicate_ids_across_split_files_name_both_files(tmp_path: Path) -> None:
    folder = tmp_path / "qa"
    folder.mkdir()
    train = write_jsonl(folder / "train.jsonl", ROWS[:2])
    test = write_jsonl(folder / "test.jsonl", [ROWS[2], {**ROWS[0], "question": "What is 1 + 1, again?"}])
    message = one_line_error(folder)
    assert f"duplicate id 'qa/q1': {test}, line 2 and {train}, line 1" in message


def test_rows_without_ids_and_the_same_prompt_are_duplicates(tmp_path: Path) -> None:
    rows = [{"question": r["question"], "answer": r["answer"]} for r in ROWS]
    path = write_jsonl(tmp_path / "qa.jsonl", [*rows, rows[1]])
    message = one_line_error(path)
    assert "line 2 and line 4" in message and "hash of the prompt" in message


def test_keep_first_drops_the_copies_and_counts_them(tmp_path: Path) -> None:
    rows = [*ROWS, {**ROWS[1], "answer": "5"}, {**ROWS[1], "answer": "six"}, {**ROWS[0], "answer": "3"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    ws = Workspace.create(tmp_path / "ws")
    cfg = IngestConfig(dataset="local", family="math", path=str(path), columns={"prompt": "question"},
                       on_duplicate="keep_first")
    table = run(cfg, tmp_path, ws)["examples"]
    answers = dict(zip(table.column("id").to_pylist(), table.column("answer").to_pylist(), strict=True))
    assert answers == {"qa/q1": "2", "qa/q2": "4", "qa/q3": "6"}  # the first copy of each id
    report = json.loads((ws.files / REPORT_FILE).read_text())
    assert report["records"] == 6 and report["examples"] == 3
    assert report["dropped"] == {"duplicate id (on_duplicate: keep_first)": 3}
    assert sorted(report["duplicate_ids"]) == ["qa/q1", "qa/q2", "qa/q2"]


def test_keep_first_count_is_published_with_the_artifact(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [*ROWS, ROWS[2]])
    cfg = IngestConfig(dataset="local", family="math", path=str(path), columns={"prompt": "question"},
                       on_duplicate="keep_first")
    art = pipeline.ingest(Store(tmp_path / "store"), cfg)
    assert art.manifest["rows"] == {"examples": 3}
    report = json.loads(art.file(REPORT_FILE).read_text())
    assert report["dropped"] == {"duplicate id (on_duplicate: keep_first)": 1}


def test_on_duplicate_rejects_unknown_policies() -> None:
    with pytest.raises(ValueError, match="on_duplicate must be one of error, keep_first"):
        IngestConfig(dataset="local", family="math", path="x.jsonl", on_duplicate="keep_last")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_latin1_file_names_file_line_and_offset(tmp_path: Path, suffix: str) -> None:
    rows = [*ROWS[:2], {"id": "q3", "question": "Combien coûte un café ?", "answer": "2"}]
    path = tmp_path / f"qa{suffix}"
    if suffix == ".csv":
        write_csv(path, rows, encoding="latin-1")
        line = 4
    else:
        path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
        line = 3
    offset = path.read_bytes().index("û".encode("latin-1"))
    message = one_line_error(path)
    assert f"{path}, line {line}: not valid UTF-8 (byte 0xfb at offset {offset})" in message


def test_latin1_offset_counts_the_bom(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + '{"id": "q1", "question": "café", "answer": "1"}\n'.encode("latin-1"))
    offset = path.read_bytes().index(0xE9)
    assert f"line 1: not valid UTF-8 (byte 0xe9 at offset {offset})" in one_line_error(path)


def test_utf16_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + "id,question,answer\r\nq1,Why?,1\r\n".encode("utf-16-le"))
    assert "is UTF-16; save it as UTF-8" in one_line_error(path)


def test_csv_header_naming_a_column_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("id,question,answer,answer\nq1,What is 1 + 1?,2,3\n")
    assert "line 1: column 'answer' appears twice in the header" in one_line_error(path)


@pytest.mark.parametrize("row", ["q2,What is 2 + 2?,4,extra", "q2,What is 2 + 2?"])
def test_csv_row_with_the_wrong_number_of_cells_is_an_error(tmp_path: Path, row: str) -> None:
    path = tmp_path / "qa.csv"
    path.write_text(f"id,question,answer\nq1,What is 1 + 1?,2\n\n{row}\n")
    cells = row.count(",") + 1
    assert f"line 4: {cells} cells, the header has 3 columns" in one_line_error(path)


def test_json_object_with_a_repeated_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": "q1", "question": "What is 1 + 1?", "answer": "2"}\n'
                    '{"id": "q2", "question": "What is 2 + 2?", "answer": "4", "answer": "5"}\n')
    assert "line 2: key 'answer' appears twice in one object" in one_line_error(path)


def test_corrupt_parquet_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 64)
    assert "not a readable Parquet file" in one_line_error(path)


def test_a_row_error_names_the_line_of_a_csv_with_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text('id,question,answer\nq1,"What is\n1 + 1?",2\nq2,,4\n')
    assert f"{path}, line 4: column 'question' (field prompt) is empty" in one_line_error(path)
