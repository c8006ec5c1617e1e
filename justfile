# Recipes for developers. `bash scripts/bootstrap.sh` first (it installs `just` into .venv).
export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')

default:
    @just --list

# Rebuild the Rust extension into the package (release mode)
build:
    maturin develop --release --quiet

# Rust unit tests + the Python suite (without the `slow` marker)
test: build
    TINYLLAMA_WORD_RULES="$(python -m tinyllama.data.word_rules)" cargo test --quiet
    python -m pytest -q -m "not slow" python/tests

# The heavier checks (multi-process torchrun, whole-build kill/resume); CI runs them
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
