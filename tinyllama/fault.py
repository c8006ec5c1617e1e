"""The Python side of the build's fault hook (rust/build/fault.rs): `TINYLLAMA_ABORT_AFTER=POINT:N`
makes the process abort (`os.abort`: no unwinding, no clean-up, what a SIGKILL leaves) right
after the N-th time it reaches POINT, so a test can cut a run at an exact commit and prove the
previous good state is usable and a rerun / `--resume` ends with the bytes of an uninterrupted run.

Points (train/checkpoint.py `save`, on the rank that commits):
  save-files      a checkpoint's files written into step-N.tmp/, before its checksums
  save-checksums  checksums.json written, before the rename
  save-commit     step-N.tmp/ renamed to step-N/, `latest` not yet moved
  latest          `latest` moved, before keep-last prunes
Unset, or set to anything unparsable, the hook does nothing.
"""

from __future__ import annotations

import os
import sys

ENV = "TINYLLAMA_ABORT_AFTER"
_counts: dict[str, int] = {}


def reached(point: str) -> None:
    """Count one arrival at `point`; abort the process when it is the configured one."""
    want, _, n = os.environ.get(ENV, "").partition(":")
    if want != point or not n.strip().isdigit():
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n):
        sys.stderr.write(f"{ENV}: aborting after {point} #{n}\n")
        sys.stderr.flush()
        os.abort()
