"""Stage glue shared by the CLI and the Prefect flows: compute keys, reuse or build artifacts.

Each function materialises one artifact in the store: a cache hit returns at once, otherwise the
stage's pure `run` is called inside a workspace (resumable) and its tables are written atomically.
Models are loaded lazily, only when some artifact actually needs computing, and shared between
stages of the same process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict

from engines import assets
from engines.generation import HFGenerator
from engines.models import ModelConfig, fingerprint, load_model
from stages import evaluate as evaluate_stage
from stages import ingest as ingest_stage
from storage import Artifact, Store, StageSpec

log = logging.getLogger(__name__)

INGEST_SPEC = StageSpec(name="ingest", version=ingest_stage.VERSION, inputs={},
                        outputs={"examples": evaluate_stage.SPEC.inputs["examples"]})


def ingest(store: Store, cfg: ingest_stage.IngestConfig, *, force: bool = False) -> Artifact:
    return store.materialize(INGEST_SPEC, {"ingest": asdict(cfg)}, {},
                             lambda ws: ingest_stage.run(cfg, assets.cache_dir()), force=force)


@functools.lru_cache(maxsize=2)
def _loaded(model: ModelConfig):
    return load_model(model)


def evaluate(store: Store, model: ModelConfig, cfg: evaluate_stage.EvaluateConfig, examples: Artifact,
             *, method: str = "base", force: bool = False) -> Artifact:
    """Evaluate ``model`` (labelled ``method``) on the test split of one examples artifact."""
    key_config = {"evaluate": asdict(cfg), "model": fingerprint(model.path), "model_label": model.label,
                  "dtype": model.dtype, "method": method}

    def compute(ws):
        m, tok = _loaded(model)
        gen = HFGenerator(m, tok, batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                          on_long_prompt=cfg.on_long_prompt)
        return evaluate_stage.run(cfg, examples.table("examples"), gen, ws, model.label, method)

    return store.materialize(evaluate_stage.SPEC, key_config, {"examples": examples}, compute, force=force)
