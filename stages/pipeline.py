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
from engines.models import ModelConfig, fingerprint, load_model, precision_record
from stages import analyze as analyze_stage
from stages import calibrate as calibrate_stage
from stages import contexts as contexts_stage
from stages import evaluate as evaluate_stage
from stages import induction as induction_stage
from stages import ingest as ingest_stage
from stages import negatives as negatives_stage
from stages import retrieval as retrieval_stage
from stages import signals as signals_stage
from stages import train as train_stage
from stages.analyze.compare import compare as compare_runs
from storage import Artifact, StageSpec, Store
from storage.tracking import TrackingRun, open_tracker

log = logging.getLogger(__name__)

INGEST_SPEC = StageSpec(name="ingest", version=ingest_stage.VERSION, inputs={},
                        outputs={"examples": evaluate_stage.SPEC.inputs["examples"]})
CALIBRATE_SPEC = StageSpec(name="calibrate", version=calibrate_stage.SPEC_VERSION, inputs={},
                           outputs={"calibration": schemas.CALIBRATION})
PRIMARY_METRICS = frozenset(evaluate_stage.PRIMARY.values())
COMPARE_SPEC = StageSpec(name="compare", version=1, inputs={}, outputs={"comparisons": schemas.COMPARISONS})
REPORT_SPEC = StageSpec(name="report", version=2, inputs={}, outputs={})  # 2: the base model's section


def configure_threads(threads: int | None) -> int:
    """Apply the experiment's `threads` setting to torch and to every worker started afterwards."""
    from engines.threads import apply_threads

    return apply_threads(threads)


def ingest(store: Store, cfg: ingest_stage.IngestConfig, *, force: bool = False) -> Artifact:
    return store.materialize(INGEST_SPEC, {"ingest": asdict(cfg)}, {},
                             lambda ws: ingest_stage.run(cfg, assets.cache_dir(), ws), force=force)


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
    return fingerprint(gen.model_ref) if gen.backend == "hf" else f"{gen.base_url}|{gen.model_ref}"


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
          force: bool = False, tracking: TrackingRun | None = None) -> Artifact:
    """Train one method; with `tracking`, every step (or, on a cache hit, the stored steps of a run the
    trackers have not seen) also goes to the trackers, which never enter the key."""
    inputs = {"examples": examples, "contexts": contexts_art}
    spec = train_stage.SPEC
    if negatives_art is not None:
        inputs["negatives"] = negatives_art
    else:
        spec = replace(spec, inputs={k: v for k, v in spec.inputs.items() if k != "negatives"})
    precision = {"weights": "float32", "scoring": precision_record(cfg.score_precision, model.device)}
    cfg = replace(cfg, score_precision=precision["scoring"]["dtype"])  # the key names what the device uses
    key = {"train": asdict(cfg), "model": fingerprint(model.path), "method": method}
    tracker = open_tracker(tracking, store.key_for(spec, key, inputs), fresh=force) if tracking else None

    def compute(ws):
        neg = negatives_art.table("negatives") if negatives_art is not None else None
        table = examples.table("examples")
        out = train_stage.run(cfg, model, table, contexts_art.table("contexts"), neg, ws, method,
                              on_step=tracker.on_step if tracker is not None else None)
        dataset = ",".join(sorted(set(table.column("dataset").to_pylist())))
        return {name: _with_columns(t, method=method, dataset=dataset) for name, t in out.items()}

    try:
        art = store.materialize(spec, key, inputs, compute, force=force, extra_manifest={"precision": precision})
        if tracker is not None:
            tracker.replay(art.table("train_steps").to_pylist())
    finally:
        if tracker is not None:
            tracker.close()
    return art


def _with_columns(table, **values):
    """Set constant columns (e.g. the dataset a run trained on) on a stage's output table."""
    import pyarrow as pa

    for name, value in values.items():
        typ = pa.int64() if isinstance(value, int) else pa.string()
        col = pa.array([value] * table.num_rows, typ)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


@functools.lru_cache(maxsize=2)
def _loaded(model: ModelConfig):
    return load_model(model)


def evaluate(store: Store, model: ModelConfig, cfg: evaluate_stage.EvaluateConfig, examples: Artifact,
             *, method: str = "base", checkpoint: Artifact | None = None, seed: int | None = None,
             trained_on: str | None = None, force: bool = False) -> Artifact:
    """Evaluate ``model`` (or a trained ``checkpoint`` of it, labelled ``method``, its training ``seed``
    and the dataset it ``trained_on``) on one examples artifact."""
    inputs = {"examples": examples}
    spec = evaluate_stage.SPEC
    weights = fingerprint(model.path)
    base = model
    if checkpoint is not None and cfg.engine == "openai":
        raise ValueError(f"evaluate.engine=openai scores the server's model, not the {method} checkpoint: export "
                         "it (`unisd export --merged`), serve that folder, and evaluate it as model.path")
    if checkpoint is not None:
        merged = checkpoint.file("checkpoint/merged")
        model = replace(model, path=str(merged), name=model.label)
        weights = f"train:{checkpoint.key}"
        inputs["checkpoint"] = checkpoint
        spec = replace(spec, inputs={**spec.inputs, "checkpoint": train_stage.SPEC.outputs["train_steps"]})
    precision = (precision_record(model.dtype, model.device) if cfg.engine != "openai"
                 else {"dtype": "served", "device": cfg.base_url})  # the server's precision is its own
    model = replace(model, dtype=precision["dtype"])  # the key names the dtype actually used
    key_config = {"evaluate": cfg.key(), "model": weights, "model_label": model.label,
                  "dtype": model.dtype, "method": method, "seed": seed, "trained_on": trained_on}

    def compute(ws):
        if cfg.remote:
            gen = _remote_generator(cfg, model, base, checkpoint)
        else:
            m, tok = _loaded(model)
            gen = _generator(cfg, m, tok)
        out = evaluate_stage.run(cfg, examples.table("examples"), gen, ws, model.label, method)
        out["scores"] = _with_columns(out["scores"], split=cfg.split, eval_limit=cfg.limit,
                                      precision=model.dtype)
        if seed is None and trained_on is None:
            return out
        return {name: _with_columns(t, seed=seed, trained_on=trained_on) for name, t in out.items()}

    return store.materialize(spec, key_config, inputs, compute, force=force,
                             extra_manifest={"precision": precision})


def _generator(cfg: evaluate_stage.EvaluateConfig, model, tokenizer):
    """The generation engine `cfg.engine` on a loaded model, with the evaluate prompt-length policy."""
    engine = ContinuousGenerator if cfg.engine == "continuous" else HFGenerator
    return engine(model, tokenizer, batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                  on_long_prompt=cfg.on_long_prompt)


def _remote_generator(cfg: evaluate_stage.EvaluateConfig, model: ModelConfig, base: ModelConfig,
                      checkpoint: Artifact | None):
    """The vllm or openai engine of `cfg` for ``model`` (a ``checkpoint`` of ``base``, or ``base`` itself)."""
    from engines.models import load_tokenizer, resolve_path

    tok = load_tokenizer(model.path, model.chat_template)
    if cfg.engine == "openai":
        from engines.openai_eval import OpenAICompletions

        return OpenAICompletions(cfg.base_url, cfg.served_model, tok, batch_size=cfg.batch_size,
                                 max_prompt_tokens=cfg.max_prompt_tokens, on_long_prompt=cfg.on_long_prompt,
                                 api_key_env=cfg.api_key_env, timeout_s=cfg.request_timeout_s,
                                 retries=cfg.request_retries)
    from engines.vllm_eval import VLLMEvaluator, adapter_rank

    folder = checkpoint.file("checkpoint") if checkpoint is not None else None
    lora = folder is not None and adapter_rank(folder) is not None  # else full fine-tuning: the merged weights
    return VLLMEvaluator(resolve_path(base.path if lora or folder is None else model.path), tok,
                         adapter=folder if lora else None, max_prompt_tokens=cfg.max_prompt_tokens,
                         on_long_prompt=cfg.on_long_prompt,
                         max_new_tokens=max(cfg.sampling(f).max_new_tokens for f in evaluate_stage.DEFAULT_MAX_NEW),
                         dtype=model.dtype, gpu_memory=cfg.vllm_gpu_memory, max_lora_rank=cfg.vllm_max_lora_rank)


def signals(store: Store, cfg: signals_stage.SignalsConfig, model: ModelConfig, evaluate_cfg: evaluate_stage.EvaluateConfig,
            examples: Artifact, contexts_art: Artifact, *, force: bool = False) -> Artifact:
    """The signal diagnostics of one dataset on the base model (before training): the `signals` table.

    The greedy accuracies decode and score as `evaluate_cfg` does (token limits, stop patterns, sandbox)."""
    precision = precision_record(model.dtype, model.device)
    model = replace(model, dtype=precision["dtype"])  # the key names the dtype actually used
    settings = signals_stage.generation_settings(evaluate_cfg.local())  # decoded with the loaded model
    measured = {k: v for k, v in asdict(cfg).items() if k not in ("enabled", "num_views")}  # views: in contexts
    key = {"signals": measured, "evaluate": settings.key(), "model": fingerprint(model.path),
           "model_label": model.label, "dtype": model.dtype}

    def compute(ws):
        m, tok = _loaded(model)
        return signals_stage.run(cfg, examples.table("examples"), contexts_art.table("contexts"), m, tok,
                                 _generator(settings, m, tok), settings, model.label)

    return store.materialize(signals_stage.SPEC, key, {"examples": examples, "contexts": contexts_art}, compute,
                             force=force, extra_manifest={"precision": precision})


def analyze(store: Store, cfg: analyze_stage.AnalyzeConfig, model: ModelConfig, examples: Artifact,
            evaluation: Artifact, checkpoint: Artifact | None, *, method: str, seed: int | None = None,
            trained_on: str | None = None, force: bool = False) -> Artifact:
    """Retention rows of one evaluated run (the base model when `checkpoint` is None)."""
    inputs = {"examples": examples, "predictions": evaluation}
    spec = analyze_stage.SPEC
    if checkpoint is not None:
        inputs["checkpoint"] = checkpoint
        spec = replace(spec, inputs={**spec.inputs, "checkpoint": train_stage.SPEC.outputs["train_steps"]})
    precision = {"weights": "float32", "scoring": precision_record(cfg.precision, model.device)}
    cfg = replace(cfg, precision=precision["scoring"]["dtype"])
    scoring = {k: v for k, v in asdict(cfg).items() if k not in ("enabled", "baseline", "confidence", "bootstrap")}
    key = {"analyze": scoring, "model": fingerprint(model.path), "model_label": model.label, "method": method,
           "seed": seed, "trained_on": trained_on}

    def compute(ws):
        folder = checkpoint.file("checkpoint") if checkpoint is not None else None
        return analyze_stage.run(cfg, examples.table("examples"), evaluation.table("predictions"), model, folder,
                                 method=method, seed=seed, trained_on=trained_on)

    return store.materialize(spec, key, inputs, compute, force=force, extra_manifest={"precision": precision})


def _numbered(kind: str, schema, arts: list[Artifact]) -> tuple[dict, dict]:
    names = {f"{kind}_{i}": a for i, a in enumerate(arts)}
    return names, {name: schema for name in names}


def calibrate(store: Store, cfg: calibrate_stage.CalibrateConfig, evaluations: list[Artifact],
              runs: list[list], *, force: bool = False) -> Artifact:
    """The `calibration` table: validation scores of every (method, grid point, seed) run, labelled by
    ``runs`` ([method, point label, seed] per evaluation), and each method's chosen point."""
    evals, eval_schemas = _numbered("evaluate", schemas.SCORES, evaluations)
    spec = replace(CALIBRATE_SPEC, inputs=eval_schemas)
    key = {"calibrate": asdict(cfg), "runs": runs}

    def compute(ws):
        rows = []
        for (method, point, seed), art in zip(runs, evaluations, strict=True):
            for r in art.table("scores").to_pylist():
                if r["split"] != "validation":
                    raise ValueError(f"calibrate: {method} {point} seed {seed} was scored on {r['split']!r}, "
                                     "not validation")
                if r["metric"] in PRIMARY_METRICS:
                    rows.append({**r, "method": method, "point": point, "seed": seed})
        return {"calibration": calibrate_stage.choose(rows, cfg.points())}

    return store.materialize(spec, key, evals, compute, force=force)


def compare(store: Store, cfg: analyze_stage.AnalyzeConfig, evaluations: list[Artifact],
            analyses: list[Artifact], *, force: bool = False) -> Artifact:
    """The `comparisons` table over every evaluated run (paired per example)."""
    evals, eval_schemas = _numbered("evaluate", schemas.PREDICTIONS, evaluations)
    rets, ret_schemas = _numbered("analyze", schemas.RETENTION, analyses)
    spec = replace(COMPARE_SPEC, inputs={**eval_schemas, **ret_schemas})
    key = {"baseline": cfg.baseline, "bootstrap": cfg.bootstrap, "confidence": cfg.confidence}

    def compute(ws):
        preds = [a.table("predictions") for a in evaluations]
        table = compare_runs(preds, [a.table("retention") for a in analyses],
                             baseline=cfg.baseline, n_resamples=cfg.bootstrap, confidence=cfg.confidence)
        models = {m for t in preds for m in t.column("model").unique().to_pylist()}
        return {"comparisons": _with_columns(table, model=models.pop()) if len(models) == 1 else table}

    return store.materialize(spec, key, {**evals, **rets}, compute, force=force)


def report(store: Store, cfg: analyze_stage.AnalyzeConfig, title: str, evaluations: list[Artifact],
           trainings: list[tuple[str, int, Artifact]], analyses: list[Artifact], comparison: Artifact | None, *,
           signals: list[Artifact] = (), calibration: list[Artifact] = (), force: bool = False) -> Artifact:
    """The experiment report (report.md, report.html, figures/*.png) as an artifact's files; `signals`:
    the signal diagnostics of the trained datasets."""
    from stages.report import write_report

    evals, eval_schemas = _numbered("evaluate", schemas.SCORES, evaluations)
    train_arts, train_schemas = _numbered("train", schemas.TRAIN_STEPS, [a for _, _, a in trainings])
    rets, ret_schemas = _numbered("analyze", schemas.RETENTION, analyses)
    sigs, sig_schemas = _numbered("signals", schemas.SIGNALS, list(signals))
    cals, cal_schemas = _numbered("calibrate", schemas.CALIBRATION, list(calibration))
    inputs = {**evals, **train_arts, **rets, **sigs, **cals}
    input_schemas = {**eval_schemas, **train_schemas, **ret_schemas, **sig_schemas, **cal_schemas}
    if comparison is not None:
        inputs["compare"], input_schemas["compare"] = comparison, schemas.COMPARISONS
    spec = replace(REPORT_SPEC, inputs=input_schemas)
    key = {"title": title, "confidence": cfg.confidence, "runs": [[m, s] for m, s, _ in trainings]}

    def compute(ws):
        steps = [(m, s, a.table("train_steps")) for m, s, a in trainings]
        trained_on = [",".join(sorted(set(t.column("dataset").to_pylist()))) for _, _, t in steps]
        if len(set(trained_on)) > 1:  # one curve per (method, seed, dataset)
            steps = [(f"{m} · {d}", s, t) for (m, s, t), d in zip(steps, trained_on)]
        write_report(ws.files, title=title, scores=[a.table("scores") for a in evaluations],
                     train_steps=steps, predictions=[a.table("predictions") for a in evaluations],
                     retention=_concat([a.table("retention") for a in analyses]),
                     comparisons=comparison.table("comparisons") if comparison is not None else None,
                     confidence=cfg.confidence, signals=_concat([a.table("signals") for a in signals]),
                     calibration=_concat([a.table("calibration") for a in calibration]))
        return {}

    return store.materialize(spec, key, inputs, compute, force=force)


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables) if tables else None
