"""DuckDB catalog: per-table views with stage/artifact_key, the artifacts view, atomic rebuild, formatting."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

import schemas
from storage import StageSpec, Store, format_table, query, refresh_catalog


def test_table_views_union_artifacts_with_their_keys(store, spec, counting, make_scores):
    a = store.materialize(spec, {"a": 1}, {}, counting(make_scores(2, dataset="gsm8k")))
    b = store.materialize(spec, {"a": 2}, {}, counting(make_scores(3, dataset="mmlu", value=0.25)))
    got = query(store.root, "select artifact_key, stage, dataset, count(*) as n, sum(value) as v "
                            "from scores group by all order by n").to_pylist()
    assert got == [
        {"artifact_key": a.key, "stage": "evaluate", "dataset": "gsm8k", "n": 2, "v": 0.5 + 1.5},
        {"artifact_key": b.key, "stage": "evaluate", "dataset": "mmlu", "n": 3, "v": 0.25 + 1.25 + 2.25},
    ]
    cols = query(store.root, "select * from scores limit 0").column_names
    assert cols == make_scores().column_names + ["stage", "artifact_key"]


def test_artifacts_view_reads_manifests(store, spec, counting):
    a = store.materialize(spec, {"a": 1, "nested": {"k": [1, 2]}}, {}, counting(),
                          extra_manifest={"model_revision": "r1"})
    rows = store.query("select stage, version, key, config->>'$.nested.k[1]' as k1, rows->>'scores' as n, "
                       "extra->>'model_revision' as rev, cast(timings->>'seconds' as double) >= 0 as timed, "
                       "package_version, host from artifacts").to_pylist()
    assert rows == [{"stage": "evaluate", "version": 1, "key": a.key, "k1": "2", "n": "2", "rev": "r1",
                     "timed": True, "package_version": a.manifest["package_version"],
                     "host": a.manifest["host"]}]
    joined = store.query("select count(*) as n from scores join artifacts on artifact_key = key")
    assert joined.column("n").to_pylist() == [2]


def test_empty_store_has_an_empty_artifacts_view_and_no_table_views(tmp_path):
    path = refresh_catalog(tmp_path)
    assert path == tmp_path / "catalog.duckdb"
    assert query(tmp_path, "select count(*) as n from artifacts").column("n").to_pylist() == [0]
    with pytest.raises(duckdb.CatalogException):
        query(tmp_path, "select * from scores")


def test_catalog_file_works_standalone_from_another_directory(store, spec, counting, tmp_path, monkeypatch):
    store.materialize(spec, {"a": 1}, {}, counting())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # views use absolute paths, as the duckdb CLI needs
    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    try:
        assert con.sql("select count(*) from scores").fetchall() == [(2,)]
        assert con.sql("select count(*) from artifacts").fetchall() == [(1,)]
    finally:
        con.close()


def test_refresh_swaps_file_under_open_reader(store, spec, counting):
    store.materialize(spec, {"a": 1}, {}, counting())
    old = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    try:
        store.materialize(spec, {"a": 2}, {}, counting())  # replaces catalog.duckdb underneath
        assert old.sql("select count(*) from scores").fetchall() == [(2,)]  # its snapshot, still readable
        assert old.sql("select count(*) from artifacts").fetchall() == [(1,)]
    finally:
        old.close()
    assert store.query("select count(*) as n from scores").column("n").to_pylist() == [4]
    assert sorted(p.name for p in store.root.iterdir()) == ["catalog.duckdb", "evaluate"]


def test_catalog_failure_does_not_fail_materialize(tmp_path, spec, counting, caplog):
    store = Store(tmp_path / "s")
    (store.root / "catalog.duckdb").mkdir()  # os.replace onto a directory fails
    art = store.materialize(spec, {"a": 1}, {}, counting())
    assert store.get("evaluate", art.key) == art
    assert "could not refresh the DuckDB catalog" in caplog.text


def test_new_table_name_gets_a_view(store, spec, counting):
    store.materialize(spec, {"a": 1}, {}, counting())
    assert "predictions" not in store.query("select view_name from duckdb_views()").column(0).to_pylist()
    row = {"id": "1", "dataset": "d", "model": "m", "method": "x", "sample": 0, "prompt_tokens": 3,
           "completion": "c", "correct": True, "score": 1.0, "latency": 0.1, "truncated": False}
    store.materialize(StageSpec("evaluate", 2, {}, {"predictions": schemas.PREDICTIONS}), {}, {},
                      lambda ws: {"predictions": [row]})
    assert store.query("select id, correct from predictions").to_pylist() == [{"id": "1", "correct": True}]


def _sample() -> pa.Table:
    return pa.table({"name": ["a", "b" * 100, None], "value": [1.5, 22.25, None], "n": [1, 20, 300],
                     "tags": [["x"], [], None]})


def test_format_table_plain_text_aligned_and_truncated():
    text = format_table(_sample(), "table", max_width=10)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "value", "n", "tags"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[3].startswith("bbbbbbbbb… ") and "NULL" in lines[4]
    assert len({len(line) for line in lines[1:2]}) == 1
    assert lines[2].index("1.5") + 3 == lines[3].index("22.25") + 5  # numbers right-aligned
    assert lines[-1] == "(3 rows)"


def test_format_table_csv_and_json():
    csv_text = format_table(_sample(), "csv")
    assert csv_text.splitlines()[0] == "name,value,n,tags"
    assert csv_text.splitlines()[1] == 'a,1.5,1,"[""x""]"'
    assert csv_text.splitlines()[3] == ",,300,"
    assert json.loads(format_table(_sample(), "json"))[1] == {"name": "b" * 100, "value": 22.25, "n": 20,
                                                               "tags": []}
    with pytest.raises(ValueError, match="format must be"):
        format_table(_sample(), "xml")


def test_unreadable_file_leaves_out_only_its_artifact(store, spec, counting, make_scores, caplog):
    art = store.materialize(spec, {"a": 1}, {}, counting())
    good = store.materialize(spec, {"a": 2}, {}, counting(make_scores(3)))
    store.materialize(StageSpec("ingest", 1, {}, {"examples": schemas.EXAMPLES}), {}, {},
                      lambda ws: {"examples": [{"id": "1", "dataset": "d", "split": "test", "family": "free",
                                                "prompt": "p", "reference": "r", "answer": "a"}]})
    (art.path / "scores.parquet").write_bytes(b"garbage")
    assert store.query("select id from examples").to_pylist() == [{"id": "1"}]
    assert store.query("select artifact_key, count(*) as n from scores group by all").to_pylist() == [
        {"artifact_key": good.key, "n": 3}]  # the view stays, without the bad file
    assert f"catalog: leaving out evaluate/{art.key[:12]}" in caplog.text
    assert store.query("select count(*) as n from artifacts").column("n").to_pylist() == [2]


def test_old_manifest_without_records_still_listed_and_checked_by_rows(store, spec, counting, make_scores,
                                                                      caplog):
    old = store.materialize(spec, {"a": 1}, {}, counting())
    good = store.materialize(spec, {"a": 2}, {}, counting(make_scores(3)))
    manifest = json.loads((old.path / "manifest.json").read_text())
    del manifest["files"]  # written before file records existed
    (old.path / "manifest.json").write_text(json.dumps(manifest))
    assert store.query("select count(*) as n from scores").column("n").to_pylist() == [5]
    assert "records no file sizes or hashes" in caplog.text
    (old.path / "scores.parquet").write_bytes(b"garbage")  # no size to compare, but the footer is unreadable
    rows = store.query("select artifact_key, count(*) as n from scores group by all").to_pylist()
    assert rows == [{"artifact_key": good.key, "n": 3}]


def test_plain_text_keeps_columns_with_the_same_name():
    import pyarrow as pa

    from storage.catalog import format_table

    table = pa.Table.from_arrays([pa.array(["A"]), pa.array(["B"])], names=["extracted", "extracted"])
    lines = format_table(table).splitlines()
    assert lines[0].split() == ["extracted", "extracted"] and lines[2].split() == ["A", "B"]
