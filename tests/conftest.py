"""Test defaults: offline, CPU, no sockets except loopback, small thread counts, markers."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNISD_THREADS", "1")  # tiny models: the `threads` setting resolves to one thread in tests
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

_real_connect = socket.socket.connect


def _loopback_only(self, address):  # tests never reach the network; local servers are fine
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise RuntimeError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)  # tiny models: threading overhead dominates, and the suite runs on 2 cores


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir():
    from engines import assets

    return assets.tiny_model_path()


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from engines.models import ModelConfig, load_model

    return load_model(ModelConfig(path=str(tiny_model_dir)))
