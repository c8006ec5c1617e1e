#!/usr/bin/env bash
# Set up a development environment from nothing but python3 + a Rust toolchain:
# a .venv with the package (Rust extension built in release mode by maturin) and every
# test/dev dependency. Idempotent: rerunning only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "maturin>=1.5,<2" "rust-just>=1.30"
# Editable install: maturin compiles rust/ (release profile) into tinyllama/_core.*.so
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import tinyllama; print('tinyllama', tinyllama.__version__, 'ready in .venv')"
