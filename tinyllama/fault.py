"""Test hooks that cut a command at an exact instant, the Python side of rust/build/fault.rs.

`TINYLLAMA_ABORT_AFTER=POINT:N` makes the process abort (`os.abort`: no unwinding, no
clean-up, what a SIGKILL leaves) right after the N-th time it reaches POINT, so a test can cut
a run at an exact commit and prove the previous good state is usable and a rerun / `--resume`
ends with the bytes of an uninterrupted run. `TINYLLAMA_SIGNAL_AFTER=POINT:N:SIGNAL` (SIGINT,
SIGTERM, SIGUSR1, SIGSTOP) instead raises that signal in the process there (a Slurm stop or a
Ctrl-C at a chosen step, not after a guessed delay; SIGSTOP: a rank that hangs with its sockets
open). `TINYLLAMA_FAULT_RANK=R` limits both to the process
whose `RANK` (torchrun's) is R. `TINYLLAMA_NONFINITE_AT=S[,S...]` makes the training loss
non-finite at schedule steps S (`nonfinite`): the guard's rewind on a real data source.
Unset, or set to anything unparsable, the hooks do nothing.

Every point, in one place (a test for each: python/tests/test_faults.py, test_build.py):

`mix build` (Rust, rust/build/fault.rs), each after the output is committed:
  fingerprint     a file's fingerprint store
  dedup           a corpus's dedup decision
  part            a file's staged part
  shard           a packed shard in staging
  manifest        a corpus's manifest in the output dir (`finish`)
  lock            every file of the mix written but `mix.json` (after the last manifest)
  mix-json        `mix.json` written, `.staging` not yet removed
  fingerprint-scratch  a file's fingerprints in `dedup_files`' scratch store (no build)
`train` (train/checkpoint.py `save`, on the rank that commits; also `import-hf`'s save):
  save-files      a checkpoint's files written into step-N.tmp/, before its checksums
  save-checksums  checksums.json written, before the rename
  save-commit     step-N.tmp/ renamed to step-N/, `latest` not yet moved
  latest          `latest` moved, before keep-last prunes
`train` (train/loop.py, train/metrics.py):
  step            an optimizer step done (applied or skipped), before the stop check and the save
  metrics         half of a metrics.jsonl line written (a torn line)
  rewind          inside a guard rewind: the weights are back at the checkpoint and the rewind
                  event (with the skip list) is logged, before the replay
`export` (hf.py): export-files    every file in the temp dir, before it is renamed into place
`import-hf` (hf.py): import-files the checkpoint's files and checksums written in step-N.tmp/,
                  before its rename
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "TINYLLAMA_ABORT_AFTER"
SIGNAL_ENV = "TINYLLAMA_SIGNAL_AFTER"
RANK_ENV = "TINYLLAMA_FAULT_RANK"
NONFINITE_ENV = "TINYLLAMA_NONFINITE_AT"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1, "SIGSTOP": signal.SIGSTOP}
_counts: dict[str, int] = {}


def _this_rank() -> bool:
    want = os.environ.get(RANK_ENV, "").strip()
    return not want or want == os.environ.get("RANK", "0").strip()


def _target(env: str) -> tuple[str, int, str] | None:
    """(point, n, rest) of `env` = POINT:N[:REST], None when unset or unparsable."""
    point, _, tail = os.environ.get(env, "").partition(":")
    n, _, rest = tail.partition(":")
    return (point, int(n), rest.strip()) if point and n.strip().isdigit() else None


def reached(point: str) -> None:
    """Count one arrival at `point`; abort the process, or raise a signal in it, when it is the
    configured one."""
    abort, sig = _target(ENV), _target(SIGNAL_ENV)
    if (abort is None or abort[0] != point) and (sig is None or sig[0] != point):
        return
    if not _this_rank():
        return
    _counts[point] = _counts.get(point, 0) + 1
    if sig is not None and sig[0] == point and _counts[point] == sig[1] and sig[2] in SIGNALS:
        sys.stderr.write(f"{SIGNAL_ENV}: {sig[2]} after {point} #{sig[1]} (pid {os.getpid()})\n")
        sys.stderr.flush()
        signal.raise_signal(SIGNALS[sig[2]])  # the handler runs before the next line of Python
    if abort is not None and abort[0] == point and _counts[point] == abort[1]:
        sys.stderr.write(f"{ENV}: aborting after {point} #{abort[1]}\n")
        sys.stderr.flush()
        os.abort()


def nonfinite(step: int) -> bool:
    """Whether the test hook makes the loss of schedule step `step` non-finite."""
    raw = os.environ.get(NONFINITE_ENV, "")
    if not raw.strip() or not _this_rank():
        return False
    try:
        return step in {int(s) for s in raw.split(",") if s.strip()}
    except ValueError:
        return False
