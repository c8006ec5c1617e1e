#!/usr/bin/env bash
# The first hour on a GPU machine: the CUDA tests and the GPU benchmark, a summary in $OUT.
#
# Needs a CUDA GPU, python with torch (+ triton) and transformers; no Rust toolchain and no
# network. The abi3 wheel in dist/ (`just wheel`), when there, is installed (without
# dependencies, into $OUT/site: nothing outside $OUT is changed); without it the tests that need
# the Rust extension say so and skip, and the rest run from the source tree. Then
# `pytest -m gpu` (python/tests/test_gpu.py, and test_float8.py when the extension imports) and
# benchmarks/gpu.py, each under a time limit, all in under 8 minutes.
#
#   bash scripts/gpu-check.sh                 # writes gpu-check-out/
#   OUT=/tmp/check PYTHON=python3.11 bash scripts/gpu-check.sh
#
# $OUT/summary.txt: device, versions, the wheel, the tests' outcome line and skip reasons, the
# benchmark's table (tokens/s, MFU, peak memory). Exit status: 0 when the tests passed (or all
# skipped), 1 when a test failed or timed out.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-470}"   # the whole check; the tests get TESTS_S of it, the benchmark the rest
TESTS_S="${TESTS_S:-240}"
start=$(date +%s)
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

say "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' \
    | tee -a "$summary" || say "gpu: nvidia-smi not found"
"$PY" - <<'EOF' 2>&1 | tee -a "$summary"
import importlib.util
import torch
print(f"python: torch {torch.__version__}, cuda {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
for name in ("triton", "transformers", "flash_attn", "torchao"):
    print(f"python: {name}: {'yes' if importlib.util.find_spec(name) else 'no'}")
EOF

# --- the extension: the wheel from dist/ into $OUT/site, else the source tree as it is ---
wheel=$(ls "$ROOT"/dist/*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
    rm -rf "$OUT/site"
    if "$PY" -m pip install --quiet --no-deps --no-index --target "$OUT/site" "$wheel" > "$OUT/wheel.log" 2>&1; then
        export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
        run_dir="$OUT"   # not the repo root: its tinyllama/ (no extension) would shadow the wheel's
        say "wheel: installed $(basename "$wheel") into $OUT/site"
    else
        say "wheel: $(basename "$wheel") did not install (see $OUT/wheel.log); using the source tree"
        run_dir="$ROOT"
    fi
else
    say "wheel: none in dist/ (build one with 'just wheel'); using the source tree"
    run_dir="$ROOT"
fi
if (cd "$run_dir" && "$PY" -c "import tinyllama._core" > "$OUT/extension.log" 2>&1); then
    say "extension: importable"
    tests=("$ROOT/python/tests/test_gpu.py" "$ROOT/python/tests/test_float8.py")
else
    say "extension: not importable ($(tail -n 1 "$OUT/extension.log")): the tests that need it skip"
    tests=("$ROOT/python/tests/test_gpu.py")
fi

# --- pytest -m gpu ---
(cd "$run_dir" && timeout --kill-after=10 "$TESTS_S" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
    -c "$ROOT/pyproject.toml" --rootdir "$ROOT" --junitxml "$OUT/gpu-tests.xml" "${tests[@]}") \
    > "$OUT/pytest.txt" 2>&1
tests_rc=$?
say ""
say "tests (pytest -m gpu, exit status $tests_rc; log: $OUT/pytest.txt):"
grep -E "^(SKIPPED|FAILED|ERROR)" "$OUT/pytest.txt" | sed 's/^/  /' | tee -a "$summary"
tail -n 1 "$OUT/pytest.txt" | sed 's/^/  /' | tee -a "$summary"
if [ "$tests_rc" -eq 124 ] || [ "$tests_rc" -eq 137 ]; then
    say "  timed out after ${TESTS_S}s"
fi

# --- benchmarks/gpu.py with what is left of the budget ---
left=$(( BUDGET_S - ($(date +%s) - start) ))
say ""
if [ "$left" -lt 60 ]; then
    say "benchmark: skipped, ${left}s of the ${BUDGET_S}s budget left"
else
    (cd "$run_dir" && timeout --kill-after=10 "$left" "$PY" "$ROOT/benchmarks/gpu.py" --steps 6 --warmup 2 \
        --variants "transformers,tinyllama,masked,masked compiled,masked float8 compiled" \
        --json "$OUT/bench.json") > "$OUT/bench.txt" 2>&1
    bench_rc=$?
    say "benchmark (benchmarks/gpu.py, exit status $bench_rc, ${left}s allowed; log: $OUT/bench.txt):"
    if [ "$bench_rc" -eq 124 ] || [ "$bench_rc" -eq 137 ]; then
        say "  timed out: the rows finished before it are in the log"
    fi
    sed -n '/^variant/,$p' "$OUT/bench.txt" | sed 's/^/  /' | tee -a "$summary"
    grep -E "^  done |no CUDA" "$OUT/bench.txt" | sed 's/^/  /' | tee -a "$summary"
fi

say ""
say "total $(( $(date +%s) - start ))s"
if [ "$tests_rc" -eq 0 ] || [ "$tests_rc" -eq 5 ]; then  # 5: nothing collected / all deselected
    exit 0
fi
exit 1
