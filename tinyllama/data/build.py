"""`mix build` from Python: resolve the spec, run the Rust pipeline, show progress, log.

Progress is a live bar on a terminal and plain log lines otherwise. Host, times and paths go
to `OUT/build.log` (never into the mix's data files, which must be relocatable and equal
across builds).

What is safe: the build holds the exclusive lock of its output dir (`OUT/.lock`, see
`tinyllama.lock`) from before it touches anything there until it is done; a second build of
the same dir fails at once with one line naming the holder and changes nothing. Neither
`OUT/.lock` nor `OUT/build.log` is part of the mix (nothing pins them; they differ between
builds). A non-empty `--out` that is no mix dir is refused untouched; a complete mix of
another spec is only replaced with `force=True` (`--force`); a complete mix of this spec is
"up to date" only when every file its `mix.json` names verifies, and is rebuilt otherwise
(the summary's `rebuilt` says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tinyllama import _core
from tinyllama.data.progress import reporter
from tinyllama.data.spec import load_spec
from tinyllama.errors import SpecError
from tinyllama.lock import LOCK_NAME, exclusive_dir_lock
from tinyllama.storage import is_url

# Entries of an output dir that do not make it the user's: the lock and the log (neither is
# part of the mix). Mirrors `check_out_dir` in rust/build/mod.rs, which checks again under
# the lock; this copy runs before the lock file is created, so a refused dir stays untouched.
_NOT_THE_MIX = {LOCK_NAME, "build.log"}


def refuse_foreign_out(out_dir: Path) -> None:
    """Refuse (one line, nothing changed) a non-empty `out_dir` that is no mix dir: a build
    deletes nothing it did not create. A mix dir has `mix.json` or `.staging`."""
    if not out_dir.is_dir() or (out_dir / "mix.json").exists() or (out_dir / ".staging").exists():
        if out_dir.exists() and not out_dir.is_dir():
            raise SpecError(f"{out_dir}: --out is a file, not a directory (nothing was changed)")
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _NOT_THE_MIX)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SpecError(f"{out_dir}: not empty and not a mix dir (no mix.json, no .staging; it holds {shown}): "
                        "mix build refuses to write into it (nothing was changed); choose a new or empty --out")


# Errors of the Rust source discovery that quote a corpus's glob pattern but neither the spec
# file nor the key: `spec: pattern 'P' matches no file (...)`, `spec: invalid glob pattern 'P': ...`.
_PATTERN_ERROR = re.compile(r"^(?:spec: )?((?:invalid glob )?pattern '(.*?)'(?: matches no file|: ).*)$", re.S)


@contextlib.contextmanager
def naming_the_key(spec, spec_path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise the build's errors about a corpus's `paths` pattern with the spec file and the
    key in front: `SPEC: key 'corpora.NAME.paths': pattern '...' matches no file (...)`."""
    try:
        yield
    except SpecError as e:
        m = _PATTERN_ERROR.match(str(e))
        # Corpora are discovered in spec order: the first corpus listing the pattern failed on it.
        name = next((c.name for c in spec.corpora.values() if m and m.group(2) in c.paths), None)
        if name is None:
            raise
        raise SpecError(f"{spec_path}: key 'corpora.{name}.paths': {m.group(1)}") from None


def set_in_flight(config: dict, in_flight_docs: int | None, in_flight_mb: int | None) -> None:
    """Put the in-flight caps (documents / MiB of text read and not yet written within a per-file
    stage) into a build config; None leaves the default. How to build, not what: not part of
    the identity, so the bytes do not depend on them."""
    for key, cap in (("in_flight_docs", in_flight_docs), ("in_flight_mb", in_flight_mb)):
        if cap is not None:
            if cap < 1:
                raise SpecError(f"{key}: must be >= 1, not {cap}")
            config[key] = int(cap)


def build_mix(
    spec_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    stream=None,
    in_flight_docs: int | None = None,
    in_flight_mb: int | None = None,
) -> dict:
    """Build (or resume) the mix a spec describes. Returns the build summary; its `rebuilt`
    says why a complete mix of this spec was rebuilt (None when it was not).

    `force`: replace a complete mix of another spec found in `out` (refused otherwise).
    `in_flight_docs` / `in_flight_mb`: caps on documents / MiB of text read and not yet written
    within the per-file stages (they bound memory; how to build, not what: the bytes do not
    depend on them)."""
    spec = load_spec(spec_path)
    target = out if out is not None else spec.out
    if is_url(str(target) if target is not None else None):  # built locally, then published there
        from tinyllama.data.remote_mix import build_to_bucket

        return build_to_bucket(spec_path, str(target), workers, force=force, progress=progress, stream=stream,
                               in_flight_docs=in_flight_docs, in_flight_mb=in_flight_mb)
    config = spec.build_config(out, workers)
    config["force"] = bool(force)
    set_in_flight(config, in_flight_docs, in_flight_mb)
    out_dir = Path(config["out"])
    refuse_foreign_out(out_dir)
    stream = stream or sys.stderr
    with exclusive_dir_lock(out_dir, "mix build"):
        tty = hasattr(stream, "isatty") and stream.isatty()
        report = reporter(stream, tty, every=5.0, keep_stages=True) if progress else None
        started = time.time()
        with naming_the_key(spec, spec_path):
            summary = _core.build_mix(json.dumps(config), report)
        if tty and report:
            stream.write("\n")
        seconds = time.time() - started
        summary["seconds"] = seconds
        with open(out_dir / "build.log", "a", encoding="utf-8") as log:
            log.write(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                "host": socket.gethostname(),
                "spec": str(Path(spec_path).absolute()),
                "out": str(out_dir.absolute()),
                "workers": config["workers"],
                **summary,
            }) + "\n")
    summary["out"] = str(out_dir)
    return summary
