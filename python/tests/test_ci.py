"""CI cannot go green without the README's tests: `.ci/run` fails when the README's test command
fails (any side of its `&&`), and under CI a test that a missing dev extra would skip fails.

`.ci/run` runs here on a copy of the repository's script with stand-ins for the bootstrap,
`just` and the venv's python that record their calls and exit as told."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent

STUB = """#!/usr/bin/env bash
echo "{name} $* REQUIRE=${{TINYLLAMA_REQUIRE_DEV_EXTRAS:-}}" >> "$CALLS"
case " $* " in *" {fail_on} "*) exit 7;; esac
exit 0
"""


def fake_checkout(tmp_path: Path, bootstrap_rc: int = 0, just_fails_on: str = "-") -> Path:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(ROOT / ".ci/run", repo / ".ci/run")
    (repo / "scripts").mkdir()
    (repo / "scripts/bootstrap.sh").write_text(f'echo bootstrap >> "$CALLS"\nexit {bootstrap_rc}\n')
    (repo / ".venv/bin").mkdir(parents=True)
    for name, fail_on in (("just", just_fails_on), ("python", "-")):
        p = repo / ".venv/bin" / name
        p.write_text(STUB.format(name=name, fail_on=fail_on))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return repo


def ci(repo: Path, tmp_path: Path) -> tuple[int, list[str]]:
    calls = tmp_path / "calls"
    calls.write_text("")
    r = subprocess.run(["bash", str(repo / ".ci/run")], env={**os.environ, "CALLS": str(calls)},
                       capture_output=True, text=True, timeout=60, check=False)
    return r.returncode, calls.read_text().splitlines()


def test_ci_runs_the_readme_command_with_the_extras_required(tmp_path):
    rc, calls = ci(fake_checkout(tmp_path), tmp_path)
    assert rc == 0, calls
    assert calls[0] == "bootstrap" and calls[1] == "just test REQUIRE=1", calls
    assert calls[-1] == "just lint REQUIRE=1"


@pytest.mark.parametrize("broken", ["bootstrap", "just test"])
def test_ci_fails_when_the_readme_command_fails(tmp_path, broken):
    """A failing bootstrap (the left of `&&`, which `set -e` alone ignores) or a failing
    `just test` stops CI with a failure before the slow checks and the linters."""
    repo = (fake_checkout(tmp_path, bootstrap_rc=3) if broken == "bootstrap"
            else fake_checkout(tmp_path, just_fails_on="test"))
    rc, calls = ci(repo, tmp_path)
    assert rc != 0, calls
    assert not any(c.startswith(("just lint", "just test-slow", "python")) for c in calls), calls
    if broken == "bootstrap":
        assert calls == ["bootstrap"]


def test_ci_runs_the_readme_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "bash scripts/bootstrap.sh && .venv/bin/just test"
    assert command + "\n" in readme
    assert "{ " + command + "; }" in (ROOT / ".ci/run").read_text(encoding="utf-8")


EXTRA_TESTS = textwrap.dedent("""
    import sys
    import pytest

    sys.modules["spacy"] = None       # a dev extra, not importable here
    sys.modules["ray"] = None         # an optional extra outside `dev`
    sys.modules["datatrove"] = None

    def test_needs_a_dev_extra():
        pytest.importorskip("spacy")

    def test_needs_ray():
        pytest.importorskip("ray")

    def test_needs_cuda():
        pytest.skip("needs CUDA")

    @pytest.fixture
    def filters():
        return pytest.importorskip("datatrove.pipeline.filters")

    def test_fixture_needs_a_dev_extra(filters):
        pass
""")
MODULE_SKIP = "import sys\nimport pytest\nsys.modules['transformers'] = None\npytest.importorskip('transformers')\n" \
              "def test_x():\n    pass\n"


@pytest.mark.parametrize("required", [True, False])
def test_a_missing_dev_extra_fails_under_ci_and_skips_elsewhere(tmp_path, required):
    (tmp_path / "test_extras.py").write_text(EXTRA_TESTS)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "TINYLLAMA_REQUIRE_DEV_EXTRAS"}
    if required:
        env["TINYLLAMA_REQUIRE_DEV_EXTRAS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
                        "--continue-on-collection-errors", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout
    if required:
        assert r.returncode == 1, out[-3000:]
        assert "FAILED test_extras.py::test_needs_a_dev_extra" in out
        assert "ERROR test_extras.py::test_fixture_needs_a_dev_extra" in out
        assert "ERROR test_module_skip.py" in out
        assert "spacy could not be imported: it is a dev extra, required when TINYLLAMA_REQUIRE_DEV_EXTRAS=1" in out
        assert "SKIPPED [1] test_extras.py" in out and "could not import 'ray'" in out and "needs CUDA" in out
    else:
        assert r.returncode == 0, out[-3000:]
        assert "5 skipped" in out.splitlines()[-1], out[-3000:]
