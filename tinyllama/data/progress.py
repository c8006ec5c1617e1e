"""Build progress for people: one line redrawn in place on a terminal, plain log lines
otherwise. Shared by the local build (`build.py`) and the Ray driver (`ray_build.py`).

Every count is the current stage's own (the Rust side starts them afresh per stage): files
done, documents and their rate, tokens and their rate, input bytes read as they are read
(not when a file ends) with MB/s, and an ETA from the input bytes left."""

from __future__ import annotations

import time
from typing import Callable


def human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(stage: str, done: int, total: int, docs: int, tokens: int, nbytes: int,
                  bytes_total: int, seconds: float) -> str:
    """One stage's state: `fingerprint web: files 3/10  docs 1.2M (40.1K/s)  tokens ...  312.0/1300.0 MB
    (25.3 MB/s)  ETA 39s` (parts without data are left out)."""
    span = max(seconds, 1e-9)
    parts = [f"{stage}:"]
    if total:
        parts.append(f"files {done}/{total}")
    if docs:
        parts.append(f"docs {human(docs)} ({human(docs / span)}/s)")
    if tokens:
        parts.append(f"tokens {human(tokens)} ({tokens / span / 1e6:.2f}M tok/s)")
    if nbytes or bytes_total:
        rate = nbytes / span
        shown = f"{nbytes / 1e6:.1f}/{bytes_total / 1e6:.1f} MB" if bytes_total else f"{nbytes / 1e6:.1f} MB"
        parts.append(f"{shown} ({rate / 1e6:.1f} MB/s)")
        if bytes_total and rate > 0 and done < total:
            parts.append(f"ETA {duration(max(bytes_total - nbytes, 0) / rate)}")
    return "  ".join(parts)


def reporter(stream, tty: bool, every: float, keep_stages: bool = False) -> Callable:
    """A progress callback `report(stage, done, total, docs, tokens, bytes, bytes_total=0,
    seconds=None)`: on a terminal one line redrawn in place (with `keep_stages`, each stage's
    last line stays when the next stage starts); otherwise a line every `every` seconds and
    one when a stage completes. Without `seconds` (the stage's age), it is timed here from
    the first call that names the stage."""
    last = {"t": 0.0, "line": "", "stage": None, "since": time.monotonic()}

    def report(stage: str, done: int, total: int, docs: int, tokens: int, nbytes: int,
               bytes_total: int = 0, seconds: float | None = None) -> None:
        if not stage:  # polled before the first stage started
            return
        now = time.monotonic()
        if stage != last["stage"] and seconds is None:
            last["since"] = now
        age = seconds if seconds is not None else now - last["since"]
        line = progress_line(stage, done, total, docs, tokens, nbytes, bytes_total, age)
        if tty:
            width = 24
            filled = int(width * done / total) if total else width
            # A new stage starts on a new line: the ended stage's final counts stay visible.
            newline = "\n" if keep_stages and last["stage"] not in (None, stage) else ""
            stream.write(f"{newline}\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            stream.flush()
        elif line != last["line"] and (now - last["t"] >= every or done == total or stage != last["stage"]):
            stream.write(line + "\n")
            stream.flush()
            last.update(t=now, line=line)
        last["stage"] = stage

    return report
