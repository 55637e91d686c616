"""Two CPU processes (torchrun, which `accelerate launch` wraps; DDP over gloo) train one model in lockstep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from test_train_fixtures import examples_table
    from engines.models import ModelConfig
    from stages import contexts, train
    from stages.negatives import LLMSource, NegativesConfig, WordNetSource
    from stages.negatives import run as build_negatives
    from stages.train import ContrastiveSettings, LoraSettings, RolloutSettings, TrainConfig
    from stages.train.loop import fit, save, setup
    from storage import Workspace

    torch.set_num_threads(1)
    out = Path({out!r})
    examples = examples_table(3)
    negs = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    ctx = contexts.run(contexts.ContextsConfig(num_views=0), examples, negs)["contexts"]
    cfg = TrainConfig(steps=2, batch_size=4, grad_accum=2, lr=1e-2, warmup_ratio=0.0, score_precision="float32",
                      lora=LoraSettings(r=4, alpha=8, dropout=0.0), rollout=RolloutSettings(max_new_tokens=4),
                      contrastive=ContrastiveSettings(weight=0.1, sources=("corrupt",)))
    run = setup(cfg, ModelConfig(path={model!r}), examples, ctx, negs, Workspace.create(out / "ws"), "ddp")
    fit(run)
    rank = run.accelerator.process_index
    adapter = {{n: p.detach() for n, p in run.student.named_parameters() if ".default." in n}}
    (out / f"rank{{rank}}.json").write_text(json.dumps({{
        "world": run.accelerator.num_processes, "rows": [[r["step"], r["loss"]] for r in run.rows],
        "tokens": [dict(r["metrics"])["train/tokens/completion"] for r in run.rows],
        "checksum": float(sum(p.double().abs().sum() for p in adapter.values())),
    }}))
    save(run)
""")


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical(tmp_path, tiny_model_dir):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path), model=str(tiny_model_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(script)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["rows"] == ranks[1]["rows"]  # the logged loss is the global one on both ranks
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == [16.0, 16.0]  # 4 prompts × 4 tokens, summed over ranks
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    assert (tmp_path / "ws" / "files" / "checkpoint" / "merged" / "model.safetensors").exists()
