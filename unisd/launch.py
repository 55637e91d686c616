"""`python -m unisd.launch`: train one (method, seed, dataset) of an experiment, under `accelerate launch`.

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 \\
        -m unisd.launch --preset smoke_train --method sd --seed 0 --dataset medmcqa [key=value ...]

Every process resolves the same experiment with `load_experiment` and runs `stages.train.launch.train_one`
(the flow's pipeline functions; the main process alone writes the store). Without `accelerate launch` it
trains in one process. The main process prints ``train/<key> (N processes)``.
"""

from __future__ import annotations

import argparse
import os
import sys

from stages.train.launch import LaunchError, train_one
from unisd.config import ExperimentConfig, load_experiment, method_names
from unisd.configtools import ConfigError


def pick(exp: ExperimentConfig, method: str, dataset: str | None, model: str | None):
    """(the experiment on one model, the dataset's config) for the command line's choices."""
    if method == "base" or method not in method_names():
        raise ConfigError(f"--method {method!r}: not a training method (known: {', '.join(method_names())})")
    if exp.models:
        labels = [m.label for m in exp.models]
        if model not in labels:
            raise ConfigError(f"--model: the experiment sweeps models; pick one of {', '.join(labels)}")
        exp = exp.for_model(exp.models[labels.index(model)])
    elif model is not None and model != exp.model.label:
        raise ConfigError(f"--model {model!r}: the experiment's model is {exp.model.label!r}")
    labels = [d.label for d in exp.datasets]
    if dataset is None and len(labels) == 1:
        dataset = labels[0]
    if dataset not in labels:
        raise ConfigError(f"--dataset {dataset!r}: pick one of the experiment's datasets ({', '.join(labels)})")
    allowed = exp.method_config(method).datasets
    if allowed and dataset not in allowed:
        raise ConfigError(f"--dataset {dataset!r}: method {method} trains only on {', '.join(allowed)}")
    return exp, exp.datasets[labels.index(dataset)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m unisd.launch", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a preset in configs/ or a method name (default: default)")
    src.add_argument("--config", help="an experiment YAML file")
    ap.add_argument("--method", required=True, help="the method to train (configs/methods/<method>.yaml)")
    ap.add_argument("--seed", type=int, help="training seed (default: the experiment's first seed)")
    ap.add_argument("--dataset", help="dataset label (default: the experiment's only dataset)")
    ap.add_argument("--model", help="model label, when the experiment sweeps several models")
    ap.add_argument("--store", help="store directory (default: $UNISD_STORE, else the config's `store`)")
    ap.add_argument("--force", action="store_true", help="retrain even when the store has the artifact")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=4")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train and print ``train/<key> (N processes)`` (main process only); 2 with a one-line error."""
    from accelerate import PartialState

    from unisd import logs

    args = parse_args(argv)
    logs.setup(args.verbose)
    if args.store:
        os.environ["UNISD_STORE"] = os.path.abspath(os.path.expanduser(args.store))
    try:
        exp = load_experiment(preset=None if args.config else (args.preset or "default"), config=args.config,
                              overrides=args.overrides)
        exp, ds = pick(exp, args.method, args.dataset, args.model)
        seed = args.seed if args.seed is not None else exp.seed_list[0]
        art = train_one(exp, ds, args.method, seed, force=args.force)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = PartialState()  # the one `train_one` started
    if state.is_main_process:
        print(f"train/{art.key} ({state.num_processes} processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
