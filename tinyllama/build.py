"""`mix build` from Python: resolve the spec, run the Rust pipeline, show progress, log.

Progress is a live bar on a terminal and plain log lines otherwise. Host, times and paths go
to `OUT/build.log` (never into the mix's data files, which must be relocatable and equal
across builds).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from tinyllama import _core
from tinyllama.spec import load_spec


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def _reporter(stream, tty: bool, every: float, keep_stages: bool = False) -> Callable:
    """A progress callback: on a terminal one line redrawn in place (with `keep_stages`, each
    stage's last line stays when the next stage starts); otherwise a line every `every` seconds
    and one when a stage completes."""
    last = {"t": 0.0, "line": ""}
    start = time.monotonic()

    def report(stage: str, done: int, total: int, docs: int, tokens: int, nbytes: int) -> None:
        if not stage:  # polled before the first stage started
            return
        now = time.monotonic()
        elapsed = max(now - start, 1e-9)
        line = (f"{stage}: files {done}/{total}  docs {_human(docs)}  tokens {_human(tokens)}"
                f"  {nbytes / elapsed / 1e6:.1f} MB/s  {tokens / elapsed / 1e6:.2f}M tok/s")
        if tty:
            width = 24
            filled = int(width * done / total) if total else width
            # A new stage starts on a new line: the ended stage's final counts stay visible.
            newline = "\n" if keep_stages and last.get("stage") not in (None, stage) else ""
            stream.write(f"{newline}\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            stream.flush()
            last["stage"] = stage
        elif line != last["line"] and (now - last["t"] >= every or done == total):
            stream.write(line + "\n")
            stream.flush()
            last.update(t=now, line=line)

    return report


def build_mix(
    spec_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    *,
    progress: bool = True,
    stream=None,
) -> dict:
    """Build (or resume) the mix a spec describes. Returns the build summary."""
    spec = load_spec(spec_path)
    config = spec.build_config(out, workers)
    out_dir = Path(config["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    reporter = _reporter(stream, tty, every=5.0, keep_stages=True) if progress else None
    started = time.time()
    summary = _core.build_mix(json.dumps(config), reporter)
    if tty and reporter:
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
    return summary
