"""The allowed range of every numeric config field, checked while the config is built.

`configtools.build` checks each int/float field (and each number inside a list or mapping field, such
as ``evaluate.max_new_tokens.code`` or ``seeds[1]``) against the table below before the dataclass is
constructed, so a bad value fails with one line naming its dotted key
(``evaluate.temperature: must be >= 0, got -1``) before any work starts. NaN and infinity are refused
for every float field, declared or not.

The table is keyed by config class, so a class used in two places (the generator of `negatives.llm`
and of `induction`) is declared once and method presets (``methods.<name>.*``) are checked like
``train.*``. Every numeric field must appear here, including those where any value is fine (`ANY`):
tests/unisd/test_config.py walks every numeric field of the resolved config and fails on one that is
missing. Cross-field rules (``min_instructions <= num_instructions``) stay in each class's
``__post_init__``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """A closed or open interval; either end may be absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range (``"must be >= 1, got 0"``), or None when it is fine."""
        if not math.isfinite(value):
            return f"must be a finite number, got {show(value)}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {show(value)}" if too_low or too_high else None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{show(self.low)}, "
                    f"{show(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {show(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {show(self.high)}"
        return "a finite number"


def show(value: float) -> str:
    """``-1.0`` -> ``-1``, ``0.5`` -> ``0.5``: numbers as a user would write them."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else repr(value)


ANY = Bound()
"""Any finite value is meaningful (declared so the completeness test knows it was considered)."""
COUNT = Bound(1)
"""Sizes, counts, limits, token budgets, intervals in steps: at least 1."""
NON_NEGATIVE = Bound(0)
"""Zero is meaningful (off, none, greedy), negatives are not: weights, retries, waits, temperatures."""
POSITIVE = Bound(0, low_open=True)
"""Strictly positive reals: learning rates, timeouts, caps, divisors."""
SEED = Bound(0)
"""Random seeds: numpy refuses negative ones."""
FRACTION = Bound(0, 1)
"""A share in [0, 1]."""
MASS = Bound(0, 1, low_open=True)
"""A probability mass or quantile in (0, 1] (0 would keep nothing)."""
BELOW_ONE = Bound(0, 1, high_open=True)
"""A rate in [0, 1) (1 would freeze or drop everything)."""
OPEN_UNIT = Bound(0, 1, low_open=True, high_open=True)
"""Strictly between 0 and 1 (confidence levels, a GPU memory share)."""

GENERATION = {"batch_size": COUNT, "max_prompt_tokens": COUNT, "max_new_tokens": COUNT,
              "temperature": NON_NEGATIVE, "top_p": MASS}
SANDBOX = {"sandbox_timeout_s": POSITIVE, "sandbox_memory_mb": COUNT, "sandbox_workers": COUNT}


@functools.cache
def rules() -> Mapping[type, Mapping[str, Bound]]:
    """Config class -> numeric field -> allowed range (imported lazily: the stage configs import a lot)."""
    from stages.analyze import AnalyzeConfig
    from stages.calibrate import CalibrateConfig
    from stages.contexts import ContextsConfig
    from stages.evaluate import EvaluateConfig
    from stages.induction import InductionConfig
    from stages.induction.llm import GeneratorConfig
    from stages.ingest import IngestConfig
    from stages.negatives import CorruptSource, LLMSource, NegativesConfig, WordNetSource
    from stages.retrieval import RetrievalConfig
    from stages.signals import SignalsConfig
    from stages.train import config as train
    from unisd.config import ExperimentConfig

    return {
        ExperimentConfig: {"seed": SEED, "seeds": SEED, "threads": COUNT, "parallel": COUNT},
        IngestConfig: {"limit": COUNT, "test_fraction": FRACTION, "validation_fraction": FRACTION,
                       "seed": SEED, "num_math_items": COUNT},
        CalibrateConfig: {"seeds": SEED, "limit": COUNT},
        EvaluateConfig: {**GENERATION, **SANDBOX, "limit": COUNT, "num_samples": COUNT, "seed": SEED,
                         "chunk_size": COUNT, "max_prompt_chars": COUNT, "max_completion_chars": COUNT,
                         "request_timeout_s": POSITIVE, "request_retries": NON_NEGATIVE, "vllm_gpu_memory": OPEN_UNIT,
                         "vllm_max_lora_rank": COUNT},
        train.TrainConfig: {"steps": COUNT, "batch_size": COUNT, "grad_accum": COUNT, "lr": POSITIVE,
                            "warmup_ratio": BELOW_ONE, "weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE,
                            "seed": SEED, "score_batch_tokens": COUNT, "checkpoint_every": COUNT,
                            "log_every": COUNT, "max_train_examples": COUNT},
        train.LoraSettings: {"r": COUNT, "alpha": POSITIVE, "dropout": BELOW_ONE},
        train.RolloutSettings: {"max_new_tokens": COUNT, "temperature": NON_NEGATIVE, "top_p": MASS,
                                "max_prompt_tokens": COUNT, "log_samples": NON_NEGATIVE,
                                "on_policy_fraction": FRACTION, "vllm_gpu_memory": OPEN_UNIT},
        train.DivergenceSettings: {"beta": FRACTION, "temperature": POSITIVE, "weight": NON_NEGATIVE,
                                   "chunk_size": COUNT, "topk": COUNT},
        train.TeacherSettings: {"ema_beta": BELOW_ONE, "ema_every": COUNT},
        train.AgreementSettings: {"num_views": NON_NEGATIVE, "gamma": NON_NEGATIVE, "quantile": MASS,
                                  "cap": POSITIVE, "floor": MASS},
        train.ContrastiveSettings: {"weight": NON_NEGATIVE, "margin": NON_NEGATIVE},
        train.FeatureSettings: {"weight": NON_NEGATIVE},
        train.ClipSettings: {"max_value": POSITIVE, "quantile": MASS},
        train.SFTSettings: {"weight": NON_NEGATIVE},
        ContextsConfig: {"num_views": NON_NEGATIVE, "donors_per_view": COUNT, "seed": SEED},
        GeneratorConfig: {**GENERATION, "timeout_s": POSITIVE},
        LLMSource: {"num_per_item": NON_NEGATIVE, "max_attempts": COUNT, "retries": NON_NEGATIVE,
                    "backoff_s": NON_NEGATIVE},
        WordNetSource: {"num_per_item": NON_NEGATIVE, "max_swaps": COUNT},
        CorruptSource: {"num_per_item": NON_NEGATIVE},
        NegativesConfig: {**SANDBOX, "limit": COUNT, "chunk_size": COUNT, "seed": SEED},
        RetrievalConfig: {"k": COUNT, "ivf_nlist": COUNT, "ivf_nprobe": COUNT, "hnsw_m": Bound(2),
                          "hnsw_ef_search": COUNT, "batch_size": COUNT, "max_seq_length": COUNT, "seed": SEED},
        InductionConfig: {"num_instructions": COUNT, "num_demos": COUNT, "max_attempts": COUNT,
                          "min_instructions": NON_NEGATIVE, "min_words": COUNT, "max_chars": COUNT,
                          "max_demo_chars": COUNT, "retries": NON_NEGATIVE, "backoff_s": NON_NEGATIVE,
                          "seed": SEED},
        AnalyzeConfig: {"confidence": OPEN_UNIT, "bootstrap": COUNT, "max_examples": COUNT, "batch_size": COUNT,
                        "batch_tokens": COUNT, "max_prompt_tokens": COUNT, "max_completion_tokens": COUNT,
                        "chunk_size": COUNT},
        SignalsConfig: {"limit": COUNT, "num_views": NON_NEGATIVE, "max_new_tokens": COUNT, "temperature": POSITIVE,
                        "seed": SEED, "batch_size": COUNT, "batch_tokens": COUNT, "max_gold_tokens": COUNT,
                        "chunk_size": COUNT, "confidence": OPEN_UNIT},
    }
