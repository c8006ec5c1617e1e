"""One writer per output directory: an exclusive `flock` on `DIR/.lock`.

`mix build`, `train`, `export`, `import-hf` and `demo` take it before they touch anything in
their output dir. A second process on the same dir gets `LockedError` naming the holder (pid,
host, command, since when) and has changed nothing: the lock file is opened without
truncation and only rewritten by the process that holds the lock.

The kernel drops a `flock` when its holder dies, whatever the death (SIGKILL included), so a
stale `.lock` file never blocks a rerun; the file itself is left in place on purpose (deleting
it on release would let a third process lock a fresh inode while a second still waits on the
old one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tinyllama.errors import LockedError, StorageError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!s}, "
            f"since {info.get('since')})")


@contextlib.contextmanager
def exclusive_dir_lock(directory: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold the exclusive lock of `directory` (created if missing) for the `with` block.

    `what` names the operation for the error message ("mix build", "train", ...). Raises
    `LockedError` at once (never waits) when another process holds it.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"{directory}: cannot create the output dir for {what}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{directory}: in use by {_holder(path)}; {what} refused (nothing was changed)"
                ) from None
            raise StorageError(f"{path}: cannot lock: {e.strerror or e}") from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with contextlib.suppress(OSError):  # the holder line is a courtesy: never fail on it
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


__all__ = ["LOCK_NAME", "exclusive_dir_lock"]
