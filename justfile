# Recipes for developers. `bash scripts/bootstrap.sh` first (it installs `just` into .venv).
export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')

default:
    @just --list

# Only when rust/, Cargo.* or pyproject.toml are newer than the built module (not right after the
# bootstrap built it); --skip-install runs no pip (the editable install imports from this tree).
# Rebuild the Rust extension into the package (release mode) if its sources changed
build:
    #!/usr/bin/env bash
    set -euo pipefail
    so=$(ls tinyllama/_core*.so 2>/dev/null | head -n 1 || true)
    if [ -n "$so" ] && [ -z "$(find rust Cargo.toml Cargo.lock pyproject.toml -newer "$so" -print -quit)" ]; then
        exit 0
    fi
    maturin develop --release --quiet --skip-install

# Rust unit tests + the Python suite (without the `slow` marker)
test: build
    TINYLLAMA_WORD_RULES="$(python -m tinyllama.data.word_rules)" cargo test --quiet
    python -m pytest -q -m "not slow" python/tests

# The heavier checks (multi-process torchrun, more fault points, whole-corpus parity); CI runs them
test-slow: build
    python -m pytest -q -m slow python/tests

# Benchmarks against peers measured in the same run (install peers with `pip install -e .[bench]`)
bench: build
    python benchmarks/tokenizer.py

lint:
    cargo fmt --check
    cargo clippy --all-targets --quiet -- -D warnings
    ruff check tinyllama python benchmarks scripts

# An abi3 manylinux wheel in dist/
wheel:
    maturin build --release --out dist

# The whole pipeline on the bundled sample data
demo:
    tinyllama demo --out demo-out
