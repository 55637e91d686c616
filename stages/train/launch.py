"""The train stage of one (method, seed, dataset) in every process of an `accelerate launch`.

`unisd stage train` runs in a single process inside the Prefect flow. Data-parallel training needs every
process to run the same loop, which `accelerate launch` starts; `unisd.launch` is the command line:

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 \\
        -m unisd.launch --preset smoke_train --method sd --seed 0 --dataset medmcqa

Every process calls the same `stages.pipeline` functions as the flow, so the artifact keys are the flow's:
the process count is not part of the train key, because the loop makes a step over N processes the step
of one (see `stages.train.loop`).

Writing the store from N processes: the artifacts the train stage reads (ingest, negatives, retrieval or
induction views, contexts) are materialised by the main process first and then found in the store by the
others. The train artifact is computed by every process (each takes its share of the step's prompts) and
written by the main process alone, under the store's per-key lock (`RankedStore`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stages import pipeline
from stages.train.config import TrainConfig
from storage import Artifact, StageSpec, Store, Workspace
from storage.store import Compute


class LaunchError(ValueError):
    """A launch the loop cannot run as asked (the message names the setting)."""


class RankedStore(Store):
    """The store seen by one process of a multi-process launch, for a stage whose compute is collective.

    The main process materialises as usual (lock, re-check, compute, publish). When it starts computing it
    tells the other processes, which then run the same compute in the same workspace directory (so every
    process resumes from the state the main process saved there) without taking the lock or writing the
    artifact, and return the artifact once the main process has published it. A cache hit of the main
    process is a hit for every process, so the processes never disagree about whether to train (which
    would leave one of them waiting in a collective forever)."""

    def __init__(self, root: str | os.PathLike, state: Any) -> None:
        super().__init__(root)
        self.state = state
        """accelerate's `PartialState` of this process."""

    def materialize(self, spec: StageSpec, config: Any, inputs: Mapping[str, Artifact], compute: Compute,
                    *, force: bool = False, extra_manifest: Mapping | None = None) -> Artifact:
        if self.state.num_processes == 1:
            return super().materialize(spec, config, inputs, compute, force=force, extra_manifest=extra_manifest)
        from accelerate.utils import broadcast_object_list

        def announce(computing: bool) -> bool:
            return bool(broadcast_object_list([computing], from_process=0)[0])

        key = self.key_for(spec, config, inputs)
        if not self.state.is_main_process:
            if announce(False):  # the main process's answer: it computes, so this process computes with it
                compute(Workspace.create(self.partial_dir(spec.name, key)))
            self.state.wait_for_everyone()  # the main process has published (or reused) the artifact
            return self.get(spec.name, key)
        computed = False

        def lead(ws: Workspace):
            nonlocal computed
            computed = True
            announce(True)
            return compute(ws)

        art = super().materialize(spec, config, inputs, lead, force=force, extra_manifest=extra_manifest)
        if not computed:
            announce(False)
        self.state.wait_for_everyone()
        return art


def check_backend(device: str, cfg: TrainConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse launches the loop would run wrongly on `device` (cpu, cuda, ...): FSDP or DeepSpeed asked for
    on a CPU (accelerate then runs plain DDP instead, silently), and DeepSpeed with several micro-batches
    per step (accelerate's DeepSpeed `backward` steps the engine after every micro-batch the loop
    back-propagates). `environ` holds what `accelerate launch` exported from its config file."""
    fsdp = environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    deepspeed = environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if (fsdp or deepspeed) and device == "cpu":
        raise LaunchError(f"the accelerate config asks for {'FSDP' if fsdp else 'DeepSpeed'}, which accelerate "
                          "only runs on GPUs; on CPU use configs/accelerate/ddp.yaml")
    if deepspeed and cfg.grad_accum != 1:
        raise LaunchError(f"train.grad_accum={cfg.grad_accum}: under DeepSpeed every backward steps the engine, "
                          "so set train.grad_accum=1 (and a larger batch_size per process instead)")


def train_inputs(store: Store, exp, cfg: TrainConfig, examples: Artifact) -> tuple[Artifact, Artifact | None]:
    """The contexts (and negatives) artifacts the method trains with, built as the flow builds them."""
    agree = cfg.agreement.level != "none"
    num_views = cfg.agreement.num_views if agree else 0
    extra: dict[str, Artifact] = {}
    if cfg.contrastive.weight > 0:
        extra["negatives"] = pipeline.negatives(store, exp.negatives_config(), examples)
    if num_views > 0 and cfg.agreement.strategy == "retrieval":
        extra["neighbors"] = pipeline.retrieval(store, exp.retrieval, examples)
    elif num_views > 0 and cfg.agreement.strategy == "induction":
        extra["instructions"] = pipeline.induction(store, exp.induction_config(), examples)
    ctx_cfg = replace(exp.contexts, strategy=cfg.agreement.strategy, num_views=num_views)
    return pipeline.contexts(store, ctx_cfg, examples, extra), extra.get("negatives")




def train_one(exp: Any, ds: Any, method: str, seed: int, *, force: bool = False) -> Artifact:
    """Materialise the train artifact of `method` with `seed` on dataset `ds` (one of `exp.datasets`) of the
    single-model experiment `exp`, in the experiment's store. Call it in every process of a launch."""
    from accelerate import PartialState

    from engines.models import pick_device

    cfg = exp.run_config(method, seed)
    pipeline.configure_threads(exp.threads)  # divides the cores among this machine's processes
    state = PartialState(cpu=pick_device(exp.model.device) == "cpu")  # as the loop's Accelerator decides
    check_backend(state.device.type, cfg)
    plain = Store(exp.store_path)
    with state.main_process_first():  # the main process builds what is missing, the others find it
        examples = pipeline.ingest(plain, ds)
        if "train" not in set(examples.table("examples").column("split").to_pylist()):
            raise LaunchError(f"dataset {ds.label!r} has no train split")
        contexts, negatives = train_inputs(plain, exp, cfg, examples)
    store = RankedStore(exp.store_path, state)
    return pipeline.train(store, cfg, exp.model, examples, contexts, negatives, method, force=force)
