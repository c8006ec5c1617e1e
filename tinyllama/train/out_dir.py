"""The run's out dir: one run at a time, and whether the nodes of the run share it.

Rank 0 takes the out dir's exclusive lock (tinyllama/lock.py) before anything is written there;
every rank learns the outcome, so a refused second submit stops on all ranks before any of them
writes.

A multi-node run then finds out whether its nodes see one out dir (a shared filesystem) or each
its own (a relative `out` on local disks, as on a cloud cluster with no NFS): rank 0 writes a
probe file with a fresh token into its out dir and each other node's local rank 0 looks for it.
Every node sees it: one shared out dir, kept by rank 0 alone. No other node sees it: each node's
local rank 0 takes the lock of its own out dir and keeps it, and each node's dir holds that node's
part of every checkpoint (`Dist.leads_out`); the whole checkpoint exists only in `run.upload_to`,
which such a run must set (train/checkpoint.py, train/remote.py). Some nodes seeing it and others
not is refused in one line: that layout would have two nodes keep one dir.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from tinyllama.errors import StorageError, TinyllamaError
from tinyllama.lock import exclusive_dir_lock
from tinyllama.train.parallel import Dist, all_gather_objects

PROBE = ".nodes-probe-"


@contextlib.contextmanager
def lock_out_dir(out: str, d: Dist) -> Iterator[None]:
    """Hold the run's out dir (see the module doc) and set `d.out_shared`, on every rank."""
    with contextlib.ExitStack() as stack:
        error, probe = None, None
        if d.is_main:
            try:
                stack.enter_context(exclusive_dir_lock(out, "train"))
                if d.nodes > 1:
                    probe = _write_probe(Path(out))
                    stack.callback(probe.unlink, missing_ok=True)
            except TinyllamaError as e:
                error = e
            except OSError as e:
                error = StorageError(f"{out}: cannot write: {e.strerror or e}")
        first = all_gather_objects(None if error is None else str(error))[0]
        if error is not None:
            raise error
        if first is not None:
            raise TinyllamaError(first)
        if d.nodes > 1:
            _find_out_layout(out, d, all_gather_objects(probe.name if probe else None)[0], stack)
            if probe is not None:
                probe.unlink(missing_ok=True)  # every node has looked
        yield


def _write_probe(out: Path) -> Path:
    probe = out / f"{PROBE}{uuid.uuid4().hex}"
    with open(probe, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return probe


def _find_out_layout(out: str, d: Dist, probe: str, stack: contextlib.ExitStack) -> None:
    """Collective: each node's local rank 0 looks for rank 0's probe; the verdict on every rank."""
    seen = None
    if d.local_rank == 0 and not d.is_main:
        seen = (Path(out) / probe).is_file()
    verdicts = [v for v in all_gather_objects((d.rank, seen)) if v[1] is not None]
    sees = [r for r, v in verdicts if v]
    blind = [r for r, v in verdicts if not v]
    if sees and blind:
        raise TinyllamaError(
            f"{out}: the node of rank {sees[0]} shares this out dir with rank 0 but the node of rank {blind[0]} does "
            f"not: give every node the same shared out dir, or each node one of its own")
    d.out_shared = not blind
    if d.out_shared:
        return
    error = None
    if d.leads_out and not d.is_main:
        try:
            stack.enter_context(exclusive_dir_lock(out, "train"))
        except TinyllamaError as e:
            error = f"node of rank {d.rank}: {e}"
    errors = [e for e in all_gather_objects(error) if e]
    if errors:
        raise TinyllamaError(errors[0])


__all__ = ["lock_out_dir"]
