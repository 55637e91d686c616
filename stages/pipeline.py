"""Stage glue shared by the CLI and the Prefect flows: compute keys, reuse or build artifacts.

Each function materialises one artifact in the store: a cache hit returns at once, otherwise the
stage's pure `run` is called inside a workspace (resumable) and its tables are written atomically.
Models are loaded lazily, only when some artifact actually needs computing, and shared between
stages of the same process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, replace

import schemas
from engines import assets
from engines.continuous import ContinuousGenerator
from engines.generation import HFGenerator
from engines.models import ModelConfig, fingerprint, load_model
from stages import contexts as contexts_stage
from stages import evaluate as evaluate_stage
from stages import induction as induction_stage
from stages import ingest as ingest_stage
from stages import negatives as negatives_stage
from stages import retrieval as retrieval_stage
from stages import train as train_stage
from storage import Artifact, Store, StageSpec

log = logging.getLogger(__name__)

INGEST_SPEC = StageSpec(name="ingest", version=ingest_stage.VERSION, inputs={},
                        outputs={"examples": evaluate_stage.SPEC.inputs["examples"]})


def ingest(store: Store, cfg: ingest_stage.IngestConfig, *, force: bool = False) -> Artifact:
    return store.materialize(INGEST_SPEC, {"ingest": asdict(cfg)}, {},
                             lambda ws: ingest_stage.run(cfg, assets.cache_dir()), force=force)


def retrieval(store: Store, cfg: retrieval_stage.RetrievalConfig, examples: Artifact, *,
              force: bool = False) -> Artifact:
    key = {"retrieval": asdict(cfg), "embedder": retrieval_stage.embedder_fingerprint(cfg.model)}
    return store.materialize(retrieval_stage.SPEC, key, {"examples": examples},
                             lambda ws: retrieval_stage.run(cfg, examples.table("examples"), ws), force=force)


def induction(store: Store, cfg: induction_stage.InductionConfig, examples: Artifact, *,
              force: bool = False) -> Artifact:
    key = {"induction": asdict(cfg), "model": _generator_fingerprint(cfg.generator)}
    return store.materialize(induction_stage.SPEC, key, {"examples": examples},
                             lambda ws: induction_stage.run(cfg, examples.table("examples"), workspace=ws),
                             force=force)


def negatives(store: Store, cfg: negatives_stage.NegativesConfig, examples: Artifact, *,
              force: bool = False) -> Artifact:
    key = {"negatives": asdict(cfg), "model": _generator_fingerprint(cfg.llm.generator)}
    return store.materialize(negatives_stage.SPEC, key, {"examples": examples},
                             lambda ws: negatives_stage.run(cfg, examples.table("examples"), workspace=ws),
                             force=force)


def _generator_fingerprint(gen) -> str:
    return fingerprint(gen.model) if gen.backend == "hf" else f"{gen.base_url}|{gen.model}"


def contexts(store: Store, cfg: contexts_stage.ContextsConfig, examples: Artifact,
             extra: dict[str, Artifact], *, force: bool = False) -> Artifact:
    """Teacher views; ``extra`` maps a table name (negatives/neighbors/instructions) to its artifact."""
    inputs = {**contexts_stage.SPEC.inputs, **{k: schemas.ALL[k] for k in extra}}
    spec = replace(contexts_stage.SPEC, inputs=inputs)

    def compute(ws):
        kwargs = {k: art.table(k) for k, art in extra.items()}
        return contexts_stage.run(cfg, examples.table("examples"), **kwargs)

    return store.materialize(spec, {"contexts": asdict(cfg)}, {"examples": examples, **extra}, compute,
                             force=force)


def train(store: Store, cfg: train_stage.TrainConfig, model: ModelConfig, examples: Artifact,
          contexts_art: Artifact, negatives_art: Artifact | None, method: str, *,
          force: bool = False) -> Artifact:
    inputs = {"examples": examples, "contexts": contexts_art}
    spec = train_stage.SPEC
    if negatives_art is not None:
        inputs["negatives"] = negatives_art
    else:
        spec = replace(spec, inputs={k: v for k, v in spec.inputs.items() if k != "negatives"})
    key = {"train": asdict(cfg), "model": fingerprint(model.path), "method": method}

    def compute(ws):
        neg = negatives_art.table("negatives") if negatives_art is not None else None
        table = examples.table("examples")
        out = train_stage.run(cfg, model, table, contexts_art.table("contexts"), neg, ws, method)
        dataset = ",".join(sorted(set(table.column("dataset").to_pylist())))
        return {name: _with_columns(t, method=method, dataset=dataset) for name, t in out.items()}

    return store.materialize(spec, key, inputs, compute, force=force)


def _with_columns(table, **values):
    """Set constant columns (e.g. the dataset a run trained on) on a stage's output table."""
    import pyarrow as pa

    for name, value in values.items():
        col = pa.array([value] * table.num_rows, pa.string())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


@functools.lru_cache(maxsize=2)
def _loaded(model: ModelConfig):
    return load_model(model)


def evaluate(store: Store, model: ModelConfig, cfg: evaluate_stage.EvaluateConfig, examples: Artifact,
             *, method: str = "base", checkpoint: Artifact | None = None, force: bool = False) -> Artifact:
    """Evaluate ``model`` (or a trained ``checkpoint`` of it, labelled ``method``) on one examples artifact."""
    inputs = {"examples": examples}
    spec = evaluate_stage.SPEC
    weights = fingerprint(model.path)
    if checkpoint is not None:
        merged = checkpoint.file("checkpoint/merged")
        model = replace(model, path=str(merged), name=model.label)
        weights = f"train:{checkpoint.key}"
        inputs["checkpoint"] = checkpoint
        spec = replace(spec, inputs={**spec.inputs, "checkpoint": train_stage.SPEC.outputs["train_steps"]})
    key_config = {"evaluate": asdict(cfg), "model": weights, "model_label": model.label,
                  "dtype": model.dtype, "method": method}

    def compute(ws):
        m, tok = _loaded(model)
        engine = ContinuousGenerator if cfg.engine == "continuous" else HFGenerator
        gen = engine(m, tok, batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                     on_long_prompt=cfg.on_long_prompt)
        return evaluate_stage.run(cfg, examples.table("examples"), gen, ws, model.label, method)

    return store.materialize(spec, key_config, inputs, compute, force=force)
