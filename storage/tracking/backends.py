"""The three tracker backends behind `storage.tracking.MetricLogger`: MLflow, TensorBoard, wandb.

Each opens (or reopens, by the train artifact's store key) one run and writes under
``<store>/tracking/<backend>`` unless the backend's own environment variable says otherwise. The
libraries are optional extras (``pip install 'unisd[tracking]'``) and are imported only here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from storage.tracking import TrackingRun, flatten

KEY_TAG = "unisd_key"
"""Tag holding the train artifact's store key: how a later stage finds the run again."""


def _config_text(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(_plain(config), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------- MLflow

MLFLOW_NAME = re.compile(r"[^\w\-. /:]")
MAX_PARAM_CHARS = 6000


def mlflow_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite database under the store (``mlflow ui --backend-store-uri``
    reads it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


@functools.lru_cache(maxsize=4)
def _mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MLflowLogger:
    """A run in an MLflow experiment named after the unisd experiment, found again by its key tag."""

    backend = "mlflow"

    def __init__(self, run: TrackingRun, key: str, fresh: bool) -> None:
        uri = mlflow_uri(run.root)
        default = "MLFLOW_TRACKING_URI" not in os.environ
        if default:
            (run.root / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = client = _mlflow_client(uri)
        exp_id = self._experiment(run.experiment, (run.root / "mlflow" / "artifacts").as_uri() if default else None)
        found = [] if fresh else client.search_runs([exp_id], f"tags.{KEY_TAG} = '{key}'", max_results=1,
                                                   order_by=["attributes.start_time DESC"])
        self.existed = bool(found)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {**{k: str(v) for k, v in run.tags.items()}, KEY_TAG: key}
            self.run_id = client.create_run(exp_id, run_name=run.name, tags=tags).info.run_id

    def _experiment(self, name: str, artifacts: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # created by a concurrent run in between
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(MLFLOW_NAME.sub("_", k)[:250], v[:MAX_PARAM_CHARS]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, _config_text(config), "config.yaml")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(MLFLOW_NAME.sub("_", k), v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


# ---------------------------------------------------------------- TensorBoard

def tensorboard_dir(root: Path) -> Path:
    """``UNISD_TENSORBOARD_DIR``, else ``<store>/tracking/tensorboard`` (point ``tensorboard --logdir`` here)."""
    return Path(os.environ.get("UNISD_TENSORBOARD_DIR") or root / "tensorboard")


class TensorBoardLogger:
    """Event files in ``<logdir>/<run name>/<key[:8]>``: TensorBoard lists the run by that path."""

    backend = "tensorboard"

    def __init__(self, run: TrackingRun, key: str, fresh: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = tensorboard_dir(run.root) / run.name / key[:8]
        self.existed = not fresh and any(self.dir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(self.dir))

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = _config_text(config)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step or 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- Weights & Biases

def wandb_dir(root: Path) -> Path:
    """``WANDB_DIR``, else ``<store>/tracking/wandb`` (wandb adds its own ``wandb/`` folder inside)."""
    return Path(os.environ.get("WANDB_DIR") or root / "wandb")


def wandb_id(experiment: str, key: str) -> str:
    """A deterministic run id per (experiment, train artifact): later stages resume the same run."""
    return hashlib.sha256(f"{experiment}|{key}".encode()).hexdigest()[:16]


class WandbLogger:
    """A wandb run (offline unless ``WANDB_MODE`` says otherwise) with a deterministic id, resumed by it."""

    backend = "wandb"

    def __init__(self, run: TrackingRun, key: str, fresh: bool) -> None:
        import wandb

        folder = wandb_dir(run.root)
        folder.mkdir(parents=True, exist_ok=True)
        rid = wandb_id(run.experiment, key)
        self.existed = not fresh and any((folder / "wandb").glob(f"*run-*-{rid}/run-{rid}.wandb"))
        project = os.environ.get("WANDB_PROJECT") or re.sub(r"[^\w.-]", "_", run.experiment)
        tags = [str(v)[:64] for v in run.tags.values()]
        self.run = wandb.init(
            project=project, name=run.name, id=rid, dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"),
            resume="allow", tags=tags, group="/".join(run.name.split("/")[:3]), job_type="train",
            reinit="create_new", settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
        self.existed = self.existed or bool(getattr(self.run, "resumed", False))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(_plain(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        if step is None:  # final results: the run's summary (and one history row)
            self.run.summary.update(dict(metrics))
            self.run.log(dict(metrics))
        else:
            self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def read_wandb_run(path: Path, *, wait_s: float = 0.0) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (a LevelDB-style log: 7-byte
    header, 32 KiB blocks of checksummed chunks), to inspect a run without syncing it. wandb's service
    writes the file after ``finish()`` returns: with `wait_s`, wait up to that long for its exit record."""
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(Path(path).read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() >= deadline:
            return records
        time.sleep(0.2)


def _wandb_records(data: bytes) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    if data[:4] != b":W&B":
        raise ValueError("not a wandb run file (no :W&B header)")
    records, pos, chunk, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a chunk header: the block is padded
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a whole record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(chunk)
            records.append(rec)
            chunk = b""
    return records
