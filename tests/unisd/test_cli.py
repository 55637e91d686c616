import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import schemas
from storage import StageSpec, Store
from unisd.cli import main

SPEC = StageSpec(name="evaluate", version=1, inputs={}, outputs={"scores": schemas.SCORES})


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "store")
    rows = [{"dataset": "medmcqa", "model": "m", "method": "base", "metric": "accuracy", "value": 0.25, "n": 4,
             "stderr": 0.2}]
    s.materialize(SPEC, {"x": 1}, {}, lambda ws: {"scores": schemas.conform(rows, schemas.SCORES)})
    return s


def test_sql_formats(store, capsys):
    q = "select dataset, metric, value, n from scores"
    assert main(["sql", q, "--store", str(store.root), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"dataset": "medmcqa", "metric": "accuracy", "value": 0.25, "n": 4}]
    assert main(["sql", q, "--store", str(store.root), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["dataset,metric,value,n", "medmcqa,accuracy,0.25,4"]
    assert main(["sql", q, "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "medmcqa" in out and "accuracy" in out


def test_sql_error_is_one_line(store, capsys):
    assert main(["sql", "select nope from scores", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unisd: error:") and "nope" in err


def test_store_ls_and_gc(store, capsys):
    assert main(["store", "ls", "--store", str(store.root)]) == 0
    assert "evaluate" in capsys.readouterr().out
    stale = store.root / "evaluate" / (".partial-" + "ab" * 32)
    stale.mkdir()
    assert main(["store", "gc", "--store", str(store.root)]) == 0
    assert "partial-" + "ab" * 32 in capsys.readouterr().out
    assert not stale.exists()


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "--preset", "smoke", "evaluate.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 3" in out and "tiny-random-llama" in out


def _sql(store, query: str, capsys) -> tuple[int, str, str]:
    code = main(["sql", query, "--store", str(store.root)])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _refused(store, query: str, capsys) -> str:
    code, out, err = _sql(store, query, capsys)
    assert code != 0 and out == "", query
    assert err.startswith("unisd: error:") and len(err.splitlines()) == 1, err
    return err


def test_sql_copy_out_of_the_store_is_refused(store, tmp_path, capsys):
    target = tmp_path / "x.parquet"
    assert "read-only" in _refused(store, f"COPY (select 1) TO '{target}'", capsys)
    assert "read-only" in _refused(store, "COPY (select 1) TO '/tmp/x.parquet'", capsys)
    assert not target.exists()
    _refused(store, f"select 1; COPY (select 2) TO '{target}'", capsys)
    _refused(store, f"EXPLAIN ANALYZE COPY (select 3) TO '{target}'", capsys)
    assert not target.exists()


def test_sql_writes_into_the_store_are_refused(store, capsys):
    [art] = store.list()
    path = art.path / "scores.parquet"
    before = path.read_bytes()
    _refused(store, f"COPY (select 1 as x) TO '{path}'", capsys)
    _refused(store, "CREATE TABLE t AS SELECT 1", capsys)
    _refused(store, "CREATE TEMP TABLE t AS SELECT * FROM scores", capsys)
    _refused(store, "DROP VIEW scores", capsys)
    _refused(store, f"EXPORT DATABASE '{store.root / 'evaluate'}'", capsys)
    assert path.read_bytes() == before and store.verify() == [("evaluate", art.key, "ok")]


def test_sql_reads_of_other_files_are_refused(store, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    for q in (f"select * from read_text('{secret}')", "select * from read_text('/etc/passwd')",
              "select * from read_csv('/etc/passwd')", f"select * from read_blob('{store.root}/../secret.txt')",
              f"select * from glob('{tmp_path}/*')"):
        err = _refused(store, q, capsys)
        assert "hunter2" not in err and "root:" not in err
        assert "disabled by configuration" in err, err


def test_sql_attach_set_install_load_are_refused(store, tmp_path, capsys):
    for q in (f"ATTACH '{tmp_path / 'other.duckdb'}' AS o", "ATTACH ':memory:' AS m", "SET enable_external_access = true",
              "SET allowed_directories = ['/']", "RESET lock_configuration", "INSTALL httpfs", "LOAD httpfs",
              "PRAGMA enable_profiling", "CALL pragma_version()"):
        assert "read-only" in _refused(store, q, capsys), q
    assert not (tmp_path / "other.duckdb").exists()


def test_sql_selects_over_every_view_still_work(store, capsys):
    code, out, _ = _sql(store, "select dataset, value from scores", capsys)
    assert code == 0 and "medmcqa" in out
    code, out, _ = _sql(store, "select stage, rows->>'scores' as n, files is not null as recorded from artifacts",
                        capsys)
    assert code == 0 and "evaluate" in out and "True" in out
    code, out, _ = _sql(store, "select count(*) as n from catalog_files", capsys)
    assert code == 0 and "2" in out  # scores.parquet and manifest.json
    code, out, _ = _sql(store, "with s as (select * from scores) select count(*) as n from s join artifacts "
                               "on artifact_key = key", capsys)
    assert code == 0 and "1" in out
    assert _sql(store, "EXPLAIN select * from scores", capsys)[0] == 0
    assert _sql(store, "DESCRIBE scores", capsys)[0] == 0
    assert _sql(store, "SHOW TABLES", capsys)[0] == 0


def test_store_verify_reports_each_bad_artifact_and_exits_nonzero(store, capsys):
    [good] = store.list()
    assert main(["store", "verify", "--store", str(store.root)]) == 0
    assert capsys.readouterr().err.strip() == "0 corrupt of 1 artifacts checked"
    bad = store.materialize(SPEC, {"x": 2}, {}, lambda ws: {"scores": store.list()[0].table("scores")})
    path = bad.path / "scores.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["store", "verify", "--dry-run", "--store", str(store.root)]) == 1
    out, err = capsys.readouterr()
    [line] = out.splitlines()
    assert line.startswith(f"evaluate/{bad.key[:16]}: corrupt: scores.parquet: sha256 is") and "1 corrupt of 2" in err
    assert bad.path.exists()  # --dry-run: reported only
    assert main(["store", "verify", "--store", str(store.root)]) == 1
    assert "quarantined to" in capsys.readouterr().out and not bad.path.exists()
    assert main(["store", "verify", "--store", str(store.root)]) == 0
    assert good.path.exists()


def test_store_gc_dry_run_lists_catalog_temps_of_a_killed_refresh(store, capsys):
    from storage.catalog import refresh_lock
    from storage.locking import file_lock

    dead = [store.root / f".catalog-{'a' * 32}.duckdb", store.root / f".catalog-{'a' * 32}.duckdb.wal"]
    live = store.root / f".catalog-{'b' * 32}.duckdb"
    for p in (*dead, live):
        p.write_bytes(b"x")  # just written: an age rule would hide them
    with file_lock(refresh_lock(store.root, "b" * 32)):  # a refresh still building its file
        assert main(["store", "gc", "--dry-run", "--store", str(store.root)]) == 0
        assert capsys.readouterr().out.split() == [w for p in dead for w in ("would", "remove", str(p))]
        assert all(p.exists() for p in dead)
        assert main(["store", "gc", "--store", str(store.root)]) == 0
        assert not any(p.exists() for p in dead) and live.exists()
    capsys.readouterr()
    assert main(["store", "gc", "--store", str(store.root)]) == 0
    assert str(live) in capsys.readouterr().out and not live.exists()


@pytest.mark.slow
@pytest.mark.integration
def test_stage_command_recomputes_its_stage_and_reuses_its_inputs(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    cmd = [str(Path(sys.executable).parent / "unisd"), "stage", "evaluate", "--preset", "smoke",
           "datasets=[{dataset: medmcqa, source: bundled, test_fraction: 0.5, limit: 4}]"]

    def run() -> dict[str, list[str]]:
        res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        store = Store(tmp_path / "store")
        return {s: sorted(a.key + a.manifest["timings"]["started"] for a in store.list(s))
                for s in ("ingest", "evaluate")}

    first, second = run(), run()
    assert len(first["ingest"]) == len(first["evaluate"]) == 1
    assert second["ingest"] == first["ingest"]  # the input came from the store
    assert second["evaluate"] != first["evaluate"]  # same key, computed again
    assert second["evaluate"][0][:64] == first["evaluate"][0][:64]
