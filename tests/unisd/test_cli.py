import json

import pytest

import schemas
from storage import StageSpec, Store
from unisd.cli import main

SPEC = StageSpec(name="evaluate", version=1, inputs={}, outputs={"scores": schemas.SCORES})


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "store")
    rows = [dict(dataset="medmcqa", model="m", method="base", metric="accuracy", value=0.25, n=4, stderr=0.2)]
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
