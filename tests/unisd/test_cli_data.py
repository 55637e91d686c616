"""`unisd data check`, `--store` on every subcommand, `config show` and the override syntax in --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unisd.cli import build_parser, main


def test_data_check_prints_rows_and_rejects_with_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"q": "Which is red?\n(A) sky\n(B) blood", "gold": "(B)"}, {"q": "Empty answer?\nA. x\nB. y", "gold": ""}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["data", "check", str(path), "--family", "mcqa", "prompt=q", "answer=gold"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "family mcqa\n" in out and "options: A. sky | B. blood" in out and "answer: B" in out
    assert out.strip().splitlines()[-1] == f"{path}, line 2: column 'gold' (field answer) is empty"


def test_data_check_of_a_clean_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "ideal": "4"}) + "\n")
    assert main(["data", "check", str(path), "--family", "math"]) == 0
    assert "answer: 4" in capsys.readouterr().out


def test_bad_mapping_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    assert main(["data", "check", str(path), "--family", "math", "nosuchfield=x"]) == 2
    assert "unknown field 'nosuchfield'" in capsys.readouterr().err


def test_every_subcommand_takes_store() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    missing = [name for name, p in sub.choices.items()
               if not any("--store" in a.option_strings for a in p._actions)]
    assert missing == []


def test_config_show_reflects_the_store_env_and_flag(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISD_STORE", str(tmp_path / "env-store"))
    assert main(["config", "show", "--preset", "smoke"]) == 0
    assert f"store: {tmp_path / 'env-store'}\n" in capsys.readouterr().out
    assert main(["config", "show", "--preset", "smoke", "--store", str(tmp_path / "flag")]) == 0
    assert f"store: {tmp_path / 'flag'}\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["run", "--help"], ["stage", "train", "--help"]])
def test_run_and_stage_help_show_the_override_syntax(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "key=value" in out and "train.lr=1e-4" in out
