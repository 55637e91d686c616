"""Train stage: on-policy self-distillation of a causal LM by itself (UniSD, arXiv 2605.06597).

The student samples completions y on its plain prompt x; the teacher is the same model (frozen,
EMA or current weights) on the privileged prompt c. The loss is a per-token divergence over the
completion tokens, modulated by the five UniSD mechanisms as weighted terms or weights (agreement,
EMA teacher, token contrastive, feature matching, clipping). See `loop` for the step, `step` for the
math, `teachers` for the teacher views and the LoRA EMA.

Outputs: `train_steps` (one row per optimizer step), `rollouts` (sampled completions at log steps)
and, under ``files/checkpoint/``, the LoRA adapter plus a merged plain-transformers model.
"""

from __future__ import annotations

import pyarrow as pa

import schemas
from engines.models import ModelConfig
from stages.train.config import (
    AgreementSettings,
    ClipSettings,
    ContrastiveSettings,
    DivergenceSettings,
    FeatureSettings,
    LoraSettings,
    RolloutSettings,
    SFTSettings,
    TeacherSettings,
    TrainConfig,
)
from stages.train.loop import StepCallback, fit, save, setup
from storage import StageSpec, Workspace

SPEC = StageSpec(name="train", version=2,
                 inputs={"examples": schemas.EXAMPLES, "contexts": schemas.CONTEXTS, "negatives": schemas.NEGATIVES},
                 outputs={"train_steps": schemas.TRAIN_STEPS, "rollouts": schemas.ROLLOUTS})

__all__ = [
    "SPEC", "AgreementSettings", "ClipSettings", "ContrastiveSettings", "DivergenceSettings", "FeatureSettings",
    "LoraSettings", "RolloutSettings", "SFTSettings", "StepCallback", "TeacherSettings", "TrainConfig", "run",
]


def run(cfg: TrainConfig, model: ModelConfig, examples: pa.Table, contexts: pa.Table, negatives: pa.Table | None,
        workspace: Workspace, method: str, *, on_step: StepCallback | None = None) -> dict[str, pa.Table]:
    """Train `model` with `cfg` (labelled `method`); resumes from the workspace's last saved step.

    Writes ``workspace.files/checkpoint`` (adapter + ``merged/``) and returns the ``train_steps`` and
    ``rollouts`` tables. `on_step(step, row, student)` is called after every optimizer step.
    """
    state = setup(cfg, model, examples, contexts, negatives, workspace, method)
    fit(state, on_step)
    save(state)
    return {"train_steps": schemas.conform(state.rows, schemas.TRAIN_STEPS),
            "rollouts": schemas.conform(state.rollouts, schemas.ROLLOUTS)}
