"""The installable wheel: an abi3 manylinux wheel, installed into a fresh venv with no Rust
toolchain on PATH, runs `tinyllama mix build` on the demo spec and gives the same bytes as the
development build.

The wheel is `$TINYLLAMA_WHEEL`, else the newest `dist/*.whl` (e.g. from `just wheel`), else it
is built here with `maturin build --release` (minutes). Its dependencies (numpy, polars, typer)
come from the package index, as they would for a user.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _wheel(tmp: Path) -> Path:
    if os.environ.get("TINYLLAMA_WHEEL"):
        return Path(os.environ["TINYLLAMA_WHEEL"])
    found = sorted((ROOT / "dist").glob("tinyllama_forge-*.whl"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    if shutil.which("maturin") is None:
        pytest.skip("no wheel in dist/ and no maturin to build one")
    r = subprocess.run(
        ["maturin", "build", "--release", "--out", str(tmp)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return next(tmp.glob("*.whl"))


def _no_rust_env() -> dict:
    """The environment minus every directory holding a Rust toolchain, and minus PYTHONPATH
    (so the worktree's own package cannot shadow the installed one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "VIRTUAL_ENV")}
    keep = [d for d in env.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in ("cargo", "rustc", "maturin"))]
    env["PATH"] = os.pathsep.join(keep)
    return env


def test_wheel_in_a_clean_venv(tmp_path):
    wheel = _wheel(tmp_path / "dist")
    # abi3: one wheel for every CPython >= 3.9; manylinux: installable on any recent Linux.
    assert "-abi3-" in wheel.name and "manylinux" in wheel.name, wheel.name

    env = _no_rust_env()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    bin_dir = venv / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for tool in ("cargo", "rustc"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} still on PATH"

    def run(*cmd):
        return subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900, check=False)

    r = run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = run(bin_dir / "python", "-c", "import tinyllama, sys; print(tinyllama.__file__, tinyllama.__version__)")
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout, r.stdout  # the installed package, not the worktree's

    out = tmp_path / "mix"
    r = run(bin_dir / "tinyllama", "mix", "build", "--spec", ROOT / "examples/demo.toml", "--out", out, "--quiet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run(bin_dir / "tinyllama", "mix", "inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info["corpora"]) == {"slimpajama", "starcoder", "proofpile", "skypile"}  # the demo family's
    assert all(c["docs_kept"] > 0 and c["tokens"] > 0 for c in info["corpora"].values())

    # The wheel's build equals the development build, file by file (build.log aside: it
    # records host, time and paths by design).
    from tinyllama.data.build import build_mix

    ref = tmp_path / "ref"
    build_mix(ROOT / "examples/demo.toml", ref, None, progress=False)

    def mix_files(root):  # build.log and the build's .lock are not part of the mix
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix != ".log"
                      and p.name != ".lock")

    files = mix_files(ref)
    assert files == mix_files(out)
    for f in files:
        assert filecmp.cmp(ref / f, out / f, shallow=False), f
