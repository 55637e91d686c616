"""Two CPU processes (torchrun, which `accelerate launch` wraps; DDP over gloo) take the same optimizer step as
one process: the same loss and the same gradients, with every normaliser and the quantile clip global."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

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
    from stages.train import (ClipSettings, ContrastiveSettings, FeatureSettings, LoraSettings, RolloutSettings,
                              TrainConfig)
    from stages.train.loop import fit, save, setup
    from storage import Workspace

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    examples = examples_table(3)
    negs = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    ctx = contexts.run(contexts.ContextsConfig(num_views=0), examples, negs)["contexts"]
    # greedy rollouts and GKD's seeded gold/sampled mix: each prompt's completion does not depend on
    # which process takes it, and the gold references give uneven lengths that end at EOS
    cfg = TrainConfig(steps=1, batch_size=4, grad_accum=2, lr=1e-2, warmup_ratio=0.0, score_precision="float32",
                      max_grad_norm=None, lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                      rollout=RolloutSettings(max_new_tokens=12, temperature=0.0, on_policy_fraction=0.5),
                      contrastive=ContrastiveSettings(weight=0.1, sources=("corrupt",)),
                      features=FeatureSettings(mode="joint", weight=0.5), clip=ClipSettings(quantile=0.5),
                      reduction={reduction!r})
    run = setup(cfg, ModelConfig(path={model!r}), examples, ctx, negs, Workspace.create(out / "ws"), "ddp")
    params = {{n: p for n, p in run.student.named_parameters() if p.requires_grad}}
    grads = {{}}
    step = run.optimizer.step

    def record(*args, **kwargs):
        grads.update({{n: p.grad.detach().clone() for n, p in params.items()}})
        return step(*args, **kwargs)

    run.optimizer.step = record
    fit(run)
    rank = run.accelerator.process_index
    metrics = dict(run.rows[0]["metrics"])
    torch.save(grads, out / f"grads{{rank}}.pt")
    (out / f"rank{{rank}}.json").write_text(json.dumps({{
        "world": run.accelerator.num_processes, "loss": run.rows[0]["loss"],
        "tokens": metrics["train/tokens/completion"],
        "terms": {{k: v for k, v in metrics.items() if k.startswith("train/loss/")}},
        "clip": metrics["train/clip/fraction"],
    }}))
    save(run)
""")


def _run(cmd, env):
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path, tiny_model_dir):
    """Per-sequence reduction, contrastive rows, features and the quantile clip: every denominator and κ
    must be global for the two replicas' averaged gradient to equal one process's."""
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir),
                                    reduction="sequence"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
          str(script), str(ddp)], env)
    _run([sys.executable, str(script), str(single)], env)
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((single / "rank0.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2] and one["world"] == 1
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == one["tokens"] < 4 * 12  # global count, uneven lengths
    for r in ranks:  # the logged loss and terms are the global ones on both ranks, equal to one process's
        assert r["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert 0.0 < r["clip"] < 1.0  # (the fraction is a mean over processes; κ itself is global)
        for key, value in one["terms"].items():
            assert r["terms"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key  # float32 KL near 0
    g0, g1, ref = (torch.load(path) for path in (ddp / "grads0.pt", ddp / "grads1.pt", single / "grads0.pt"))
    assert g0.keys() == ref.keys() and ref
    for name in ref:
        assert torch.equal(g0[name], g1[name]), name  # replicas hold the same averaged gradient
        assert torch.allclose(g0[name], ref[name], rtol=1e-4, atol=1e-7), name
    assert any(g.abs().max() > 1e-5 for g in ref.values())
    assert (ddp / "ws" / "files" / "checkpoint" / "merged" / "model.safetensors").exists()
