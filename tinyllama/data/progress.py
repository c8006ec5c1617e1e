"""Build progress for people: one line redrawn in place on a terminal, plain log lines
otherwise. Shared by the local build (`build.py`) and the Ray driver (`ray_build.py`)."""

from __future__ import annotations

import time
from typing import Callable


def human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def reporter(stream, tty: bool, every: float, keep_stages: bool = False) -> Callable:
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
        line = (f"{stage}: files {done}/{total}  docs {human(docs)}  tokens {human(tokens)}"
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
