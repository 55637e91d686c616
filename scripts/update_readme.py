"""Regenerate the configuration reference in README.md from the config dataclasses."""

from pathlib import Path

from unisd.config import ExperimentConfig
from unisd.configtools import reference_markdown

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start_tag, end_tag = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
start = text.index(start_tag) + len(start_tag)
end = text.index(end_tag)
readme.write_text(text[:start] + reference_markdown(ExperimentConfig) + text[end:])
print(f"updated {readme}")
