"""The OpenAI-compatible path for real: `transformers serve` on loopback, driven by `OpenAIGenerator`.

The fast test serves the tiny random model (gibberish replies): it checks the wire protocol and that
induction and LLM negatives parse, validate and count every reply without crashing. The slow test serves
the embedded SmolLM2-135M-Instruct and checks that real instructions and negatives come back accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import schemas
from engines import assets
from engines.generation import OpenAIGenerator, SamplingConfig
from stages import induction, negatives
from stages.induction import GeneratorConfig, InductionConfig
from stages.ingest.formats import mcqa_prompt, reference
from stages.negatives import CorruptSource, LLMSource, NegativesConfig, WordNetSource
from storage import Workspace

pytestmark = pytest.mark.integration

OPTIONS = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]
QUESTIONS = [("Which gas do plants absorb for photosynthesis?", "B"), ("Which gas fills party balloons?", "D"),
             ("Which gas makes up most of the air?", "C"), ("Which gas do we need to breathe?", "A")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str]:
    exe = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    if not Path(exe).exists():
        pytest.skip("the `transformers` CLI is not installed")
    return [exe, "serve"]


def start_server(model_dir: Path, timeout_s: float = 120.0):
    """A `transformers serve` process for ``model_dir`` on a free loopback port, ready for requests."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [*_serve_command(), str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}: {proc.stderr.read()[-800:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"transformers serve did not become healthy within {timeout_s}s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def examples() -> object:
    rows = [{"id": f"m/{i}", "dataset": "m", "split": "train", "family": "mcqa", "prompt": mcqa_prompt(q, OPTIONS),
             "reference": reference(a, "The explanation follows from basic chemistry."), "options": OPTIONS,
             "answer": a} for i, (q, a) in enumerate(QUESTIONS)]
    rows.append({**rows[0], "id": "m/test", "split": "test", "prompt": mcqa_prompt("Which gas is inert?", OPTIONS)})
    return schemas.conform(rows, schemas.EXAMPLES)


@pytest.fixture(scope="module")
def tiny_server():
    model_dir = assets.tiny_model_path()
    proc, url = start_server(model_dir)
    yield url, str(model_dir)
    stop_server(proc)


def test_openai_generator_talks_to_a_real_server(tiny_server):
    url, model = tiny_server
    gen = OpenAIGenerator(base_url=url, model=model, api_key_env="UNISD_TEST_NO_KEY")
    out = gen.generate(["Say hi.", "Count to three."], SamplingConfig(max_new_tokens=5, temperature=0.7, seed=1))
    assert len(out) == 2 and all(c.prompt_tokens > 0 for c in out)
    assert all(isinstance(c.text, str) for c in out)


def test_induction_and_llm_negatives_through_the_endpoint(tiny_server, tmp_path):
    url, model = tiny_server
    gcfg = GeneratorConfig(backend="openai", base_url=url, model=model, api_key_env="UNISD_TEST_NO_KEY",
                           max_new_tokens=8, temperature=1.0)
    gen = OpenAIGenerator(base_url=url, model=model, api_key_env="UNISD_TEST_NO_KEY")
    ws = Workspace.create(tmp_path / "ind")
    cfg = InductionConfig(num_instructions=2, num_demos=2, max_attempts=2, min_instructions=0,
                          max_demo_chars=200, generator=gcfg)
    out = induction.run(cfg, examples(), gen, ws)["instructions"]
    schemas.validate(out, schemas.INSTRUCTIONS)
    stats = json.loads((ws.files / "induction_stats.json").read_text())["datasets"]["m"]
    assert stats["accepted"] + stats["unfilled_slots"] == 2 and stats["accepted"] + stats["rejected_total"] >= 2
    ncfg = NegativesConfig(llm=LLMSource(num_per_item=1, max_attempts=1, backoff_s=0, generator=gcfg),
                           wordnet=WordNetSource(num_per_item=0), corrupt=CorruptSource(num_per_item=0))
    ws = Workspace.create(tmp_path / "neg")
    neg = negatives.run(ncfg, examples(), gen, ws)["negatives"]
    schemas.validate(neg, schemas.NEGATIVES)
    llm = json.loads((ws.files / "negatives_stats.json").read_text())["sources"]["llm"]
    assert llm["requested"] == 4 and neg.num_rows + llm["unfilled"] == 4
    assert "m/test" not in neg.column("id").to_pylist()


@pytest.mark.slow
def test_embedded_model_returns_accepted_instructions_and_negatives(tmp_path):
    model_dir = assets.embedded_model_path()
    proc, url = start_server(model_dir)
    try:
        gcfg = GeneratorConfig(backend="openai", base_url=url, model=str(model_dir), max_new_tokens=96,
                               api_key_env="UNISD_TEST_NO_KEY", timeout_s=900)
        gen = OpenAIGenerator(base_url=url, model=str(model_dir), api_key_env="UNISD_TEST_NO_KEY", timeout_s=900)
        cfg = InductionConfig(num_instructions=2, num_demos=2, max_attempts=4, generator=gcfg)
        out = induction.run(cfg, examples(), gen)["instructions"]
        assert out.num_rows >= 1 and all(t.strip() for t in out.column("text").to_pylist())
        ncfg = NegativesConfig(llm=LLMSource(num_per_item=1, max_attempts=2, backoff_s=0, generator=gcfg),
                               wordnet=WordNetSource(num_per_item=0), corrupt=CorruptSource(num_per_item=0))
        neg = negatives.run(ncfg, examples(), gen)["negatives"].to_pylist()
        assert neg and all(r["source"] == "llm" and r["text"].startswith("Reasoning: ") for r in neg)
        assert any(r["verified_wrong"] is not None for r in neg)
    finally:
        stop_server(proc)
