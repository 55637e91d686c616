"""A truncated or corrupt safetensors file is one line naming it, at config time and at load time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engines.models import ModelConfig, load_model
from engines.weights import WeightsError, check_weights, safetensors_problem
from unisd.cli import main


@pytest.fixture()
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_intact_folder_passes(model_copy: Path) -> None:
    check_weights(model_copy)
    assert safetensors_problem(model_copy / "model.safetensors") is None


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_weights_fail_at_load_naming_the_file(model_copy: Path, keep: float) -> None:
    weights = model_copy / "model.safetensors"
    os.truncate(weights, int(weights.stat().st_size * keep))
    with pytest.raises(WeightsError) as err:
        load_model(ModelConfig(path=str(model_copy)))
    message = str(err.value)
    assert message.startswith(f"model.path: {weights} is truncated or corrupt (its tensors need ")
    assert "\n" not in message


@pytest.mark.parametrize(("data", "why"), [
    (b"\x01\x02", "shorter than the 8-byte header length"),
    ((10**9).to_bytes(8, "little") + b"{}", "the header claims 1000000000 bytes"),
    ((4).to_bytes(8, "little") + b"{no}", "the header is not valid JSON"),
    ((2).to_bytes(8, "little") + b"[]", "the header is not a JSON object"),
])
def test_corrupt_headers_are_named(model_copy: Path, data: bytes, why: str) -> None:
    (model_copy / "model.safetensors").write_bytes(data)
    with pytest.raises(WeightsError, match=why):
        check_weights(model_copy)


def test_cli_prints_one_line_before_any_work(model_copy: Path, capsys: pytest.CaptureFixture) -> None:
    weights = model_copy / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert main(["config", "show", "--preset", "smoke", f"model.path={model_copy}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unisd: error: model.path: {weights} is truncated or corrupt (")
