"""The `unisd` command line: run the pipeline, rerun a stage, query results, manage the store and assets.

    unisd run [--preset NAME | --config FILE] [key=value ...] [--force]
    unisd stage ingest|evaluate|analyze|... [--preset ... | --config ...] [key=value ...]
    unisd report [--preset ... | --config ...] [key=value ...] [--out DIR]
    unisd sql "SELECT dataset, metric, value, n FROM scores" [--format table|csv|json]
    unisd store ls [--stage S] | unisd store gc [--dry-run] | unisd store verify [--stage S] [--dry-run]
    unisd assets install | verify | path
    unisd config show [--preset ... | --config ...] [key=value ...]
    unisd serve [--preset NAME]
    unisd export METHOD --seed N --out DIR [--merged] [--dataset D] [--preset ... | --config ...] [key=value ...]
    unisd data check FILE [--family F] [field=column ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from unisd import logs

# libgomp reads this once, when torch loads: a short spin before its threads sleep. With the default
# (long) spin, a torch pool beside another CPU job spins against it; benchmarks/threads.py measured a
# decode-shaped loop 4.7x faster busy and 0.88x idle with 10000 (AMD EPYC, AVX2, 2 cores). User's value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

log = logging.getLogger("unisd")
VERBOSE_HELP = "show tracebacks and debug logs on the terminal (run/stage/report log them to <store>/logs/)"


OVERRIDES_HELP = """overrides: dotted key=value pairs after the options change any config key (values are YAML:
numbers, true/false, null, [lists]); list items by index. `unisd config docs` lists every key.
  unisd run --preset smoke train.lr=1e-4 evaluate.limit=20 methods=[base,sd] datasets.0.limit=50"""
STORE_HELP = "store directory (default: $UNISD_STORE, else the config's `store`, else ./runs)"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="preset name in configs/ (default: default)")
    g.add_argument("--config", help="path to a YAML experiment config")
    p.set_defaults(overrides=[])  # dotted key=value overrides are collected from the remaining arguments
    p.add_argument("--force", action="store_true", help="recompute even when the store has the artifact")
    p.epilog, p.formatter_class = OVERRIDES_HELP, argparse.RawDescriptionHelpFormatter


def _store_root(arg: str | None) -> Path:
    return Path(arg or os.environ.get("UNISD_STORE") or "runs").expanduser().resolve()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unisd", description="UniSD self-distillation pipeline")
    ap.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_config_args(sub.add_parser("run", help="run the whole pipeline in-process (Prefect ephemeral mode)"))
    st = sub.add_parser("stage", help="run a single stage (and whatever it needs from the store)")
    st.add_argument("stage", choices=["ingest", "negatives", "retrieval", "induction", "contexts", "signals", "train", "evaluate",
                                      "analyze", "compare", "report"])
    _add_config_args(st)
    rp = sub.add_parser("report", help="write the experiment report (Markdown, HTML, PNG figures) to a folder")
    _add_config_args(rp)
    rp.add_argument("--out", help="output folder (default: ./report-<experiment name>)")
    sq = sub.add_parser("sql", help="read-only SQL (SELECT) over the DuckDB catalog of the store")
    sq.add_argument("query")
    sq.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sq.add_argument("--store", help="store directory (default: $UNISD_STORE or ./runs)")
    so = sub.add_parser("store", help="list, clean or verify the artifact store")
    so.add_argument("action", choices=["ls", "gc", "catalog", "verify"])
    so.add_argument("--stage")
    so.add_argument("--dry-run", action="store_true",
                    help="gc: list what would be removed; verify: report without quarantining")
    so.add_argument("--store", help="store directory (default: $UNISD_STORE or ./runs)")
    asx = sub.add_parser("assets", help="install or check the embedded model and data")
    asx.add_argument("action", choices=["install", "verify", "path"])
    cf = sub.add_parser("config", help="print the resolved configuration")
    cf.add_argument("action", choices=["show", "docs"])
    _add_config_args(cf)
    _add_export_args(sub.add_parser("export", help="copy a trained checkpoint out of the store as a folder "
                                    "transformers/peft load, with a model card (README.md)"))
    sv = sub.add_parser("serve", help="serve the deployments to the Prefect server in PREFECT_API_URL")
    sv.add_argument("--preset", default="default")
    dp = sub.add_parser("deploy", help="register the job deployment unisd-job/POOL on a Prefect work pool "
                        "(created as a process pool if missing), for experiments run with pool=POOL")
    dp.add_argument("--pool", required=True, help="work pool name")
    dp.add_argument("--limit", type=int, help="the pool's concurrency limit (jobs running at once)")
    dt = sub.add_parser("data", help="show how a data file would be ingested: first rows and every rejected row")
    dt.add_argument("action", choices=["check"])
    dt.add_argument("path", help="a .jsonl/.json/.csv/.parquet file, a folder of split files or a saved dataset")
    dt.add_argument("--family", choices=["mcqa", "code", "math", "free", "tool"], help="default: guessed")
    dt.add_argument("--dataset", default="local", help="read in a registry dataset's schema (default: local)")
    dt.add_argument("--rows", type=int, default=3, help="rows to show (default 3)")
    dt.set_defaults(preset=None, overrides=[])  # field=column mapping pairs arrive as the remaining arguments
    dt.epilog = "mapping: field=column pairs, e.g. prompt=question options=opa,opb,opc,opd answer=cop"
    for p in sub.choices.values():  # `unisd run --verbose` works too; SUPPRESS keeps a global -v
        if not any("--store" in a.option_strings for a in p._actions):
            p.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad or (rest and not hasattr(args, "preset")):
        parser.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    args.overrides = rest
    if getattr(args, "store", None) and args.cmd not in ("sql", "store"):  # every stage reads $UNISD_STORE
        os.environ["UNISD_STORE"] = str(Path(args.store).expanduser().resolve())
    logs.setup(args.verbose)
    try:
        return _dispatch(args)
    except BrokenPipeError:  # `unisd sql … | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished artifacts are kept and partial work resumes on the next run",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line on the terminal, the traceback in the log file
        return _fail(e, args.verbose)


def _fail(e: Exception, verbose: bool) -> int:
    """Report the error that ends the command: ``unisd: error: ...`` and where its traceback is."""
    import traceback

    from engines.assets import AssetError
    from unisd.configtools import ConfigError

    expected = isinstance(e, (ConfigError, AssetError, FileNotFoundError, ValueError, KeyError))
    logs.record_failure(e)
    if verbose:
        traceback.print_exception(e, file=sys.stderr)
    text = " ".join(str(e).split()) or type(e).__name__
    print("unisd: error: " + (text if expected else f"{type(e).__name__}: {text}"), file=sys.stderr)
    path = logs.log_file()
    if path is not None:
        print(f"unisd: full log and traceback: {path}", file=sys.stderr)
    elif not verbose and not expected:
        print("unisd: run with --verbose to see the traceback", file=sys.stderr)
    return 2 if expected else 1


def _dispatch(args) -> int:
    if args.cmd == "sql":
        import duckdb

        from storage.catalog import SqlRefused, format_table, query

        try:
            table = query(_store_root(args.store), args.query)
        except (duckdb.Error, SqlRefused) as e:
            print("unisd: error: " + " ".join(str(e).split()), file=sys.stderr)
            return 2
        print(format_table(table, args.format))
        return 0
    if args.cmd == "store":
        return _store(args)
    if args.cmd == "export":
        return _export(args)
    if args.cmd == "data":
        from stages.ingest.check import command

        return command(args.path, args.family, args.dataset, args.overrides, args.rows)
    if args.cmd == "assets":
        return _assets(args.action)
    if args.cmd == "config":
        import yaml

        from unisd.config import load_experiment
        from unisd.configtools import to_dict

        if args.action == "docs":
            from unisd.config import ExperimentConfig
            from unisd.configtools import reference_markdown

            print(reference_markdown(ExperimentConfig), end="")
            return 0
        exp = load_experiment(args.preset, args.config, args.overrides)
        shown = to_dict(exp) | {"store": str(exp.store_path)}  # the store actually used ($UNISD_STORE wins)
        print(yaml.safe_dump(shown, sort_keys=False), end="")
        return 0
    # validate before Prefect spins up, so a bad key fails in milliseconds with one line
    from unisd.config import load_experiment

    if args.cmd in ("run", "stage", "report"):
        exp = load_experiment(args.preset, args.config, args.overrides)
        logs.attach_file(exp.store_path)
    from flows import pipeline as flows

    if args.cmd == "serve":
        flows.serve_all(args.preset)
        return 0
    if args.cmd == "deploy":
        from flows import fanout

        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit: must be >= 1, got {args.limit}")
        print(fanout.deploy(args.pool, args.limit))
        return 0
    kwargs = dict(preset=args.preset or "default", config_path=args.config, overrides=list(args.overrides),
                  force=args.force)
    if args.cmd == "run":
        print(flows.unisd(**kwargs))
    elif args.cmd == "report":
        out = flows.write_report(exp, Path(args.out or f"report-{exp.name}"), force=args.force)
        print(out / "report.html" if (out / "report.html").exists() else out)
    else:  # `unisd stage X` recomputes X (its inputs come from the store)
        flows.STAGE_FLOWS[args.stage](**{**kwargs, "force": True})
    return 0


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", help="the method preset the checkpoint was trained with (sd, unisd_star, ...)")
    p.add_argument("--seed", type=int, help="its training seed (default: train.seed of the config)")
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument("--merged", action="store_true", help="the merged model instead of the LoRA adapter")
    p.add_argument("--dataset", help="the dataset it was trained on, when the experiment trained on several")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="the preset it was trained with (default: default)")
    g.add_argument("--config", help="the YAML experiment config it was trained with")
    p.set_defaults(overrides=[])


def _export(args) -> int:
    """`unisd export`: the experiment's checkpoint of (method, seed[, dataset]) with its model card."""
    from dataclasses import replace

    from stages.export import export, find_checkpoint, gather
    from storage import Store
    from unisd.config import load_experiment

    exp = load_experiment(args.preset, args.config, args.overrides)
    seed = args.seed if args.seed is not None else exp.train.seed
    store, found = Store(exp.store_path), []
    for model in exp.model_list:
        cfg = replace(exp.method_config(args.method), seed=seed)
        try:
            found.append((model, find_checkpoint(store, model, cfg, args.method, dataset=args.dataset)))
        except FileNotFoundError as e:
            missing = e
    if not found:
        raise missing
    if len(found) > 1:
        raise ValueError(f"{args.method} seed {seed} was trained on several models "
                         f"({', '.join(m.label for m, _ in found)}): narrow `models` with an override")
    model, train = found[0]
    base = model.label if model.path.startswith("embedded:") else model.path
    data = gather(store, train, method=args.method, seed=seed, kind="merged" if args.merged else "adapter",
                  base_model=base, experiment=exp.name, confidence=exp.analyze.confidence)
    print(export(store, train, data, Path(args.out).expanduser().resolve()))
    return 0


def _store(args) -> int:
    from storage import Store
    from storage.catalog import refresh_catalog

    store = Store(_store_root(args.store))
    if args.action == "ls":
        for a in store.list(args.stage):
            rows = ", ".join(f"{k}={v}" for k, v in a.manifest.get("rows", {}).items())
            secs = a.manifest.get("timings", {}).get("seconds")
            print(f"{a.stage:10s} {a.key[:16]}  {rows}  {secs:.1f}s" if secs is not None
                  else f"{a.stage:10s} {a.key[:16]}  {rows}")
    elif args.action == "gc":
        for p in store.gc(dry_run=args.dry_run):
            print(("would remove " if args.dry_run else "removed ") + str(p))
    elif args.action == "verify":
        return _verify(store, args.stage, quarantine=not args.dry_run)
    else:
        print(refresh_catalog(store.root))
    return 0


def _verify(store, stage: str | None, *, quarantine: bool) -> int:
    """`unisd store verify`: one line per artifact that is not intact; exit 1 if any is corrupt."""
    results = store.verify(stage=stage, quarantine=quarantine)
    for s, key, verdict in results:
        if verdict != "ok":
            print(f"{s}/{key[:16]}: {verdict}")
    corrupt = sum(v.startswith("corrupt") for _, _, v in results)
    print(f"{corrupt} corrupt of {len(results)} artifacts checked"
          + (" (the next run recomputes them)" if corrupt and quarantine else ""), file=sys.stderr)
    return 1 if corrupt else 0


def _assets(action: str) -> int:
    from engines import assets

    if action == "install":
        print(json.dumps(assets.install_all(), indent=1))
    elif action == "verify":
        print(f"model weights sha256 {assets.verify_embedded_model()}")
        print(f"medmcqa sample {assets.medmcqa_sample_path()}")
    else:
        print(assets.cache_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
