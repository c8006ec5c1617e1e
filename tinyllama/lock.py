"""One writer per output directory: an exclusive `flock` on `DIR/.lock`.

`mix build`, `train`, `export`, `import-hf` and `demo` take it before they touch anything in
their output dir. A second process on the same dir gets `LockedError` naming the holder (pid,
host, command, since when) and has changed nothing: the lock file is opened without
truncation and only rewritten by the process that holds the lock.

The kernel drops a `flock` when its holder dies, whatever the death (SIGKILL included), so a
stale `.lock` file never blocks a rerun; the file itself is left in place on release.

One exception: a command that fails (raises) having created the dir, or the lock file, and
left nothing else there removes what it created (the lock file, then the dirs, deepest
first), so a failed first `mix build --out NEW` leaves no `NEW/` holding only `.lock`. It
unlinks the lock file while it still holds the lock; a process that opened the old file
before that finds, once it has the lock, that the path no longer names the file it locked,
and starts again on the path.
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
    path = directory / LOCK_NAME
    created = _missing_dirs(directory)  # what this call creates, deepest first
    lock_existed = path.exists()
    for attempt in range(_ATTEMPTS):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if attempt + 1 < _ATTEMPTS:  # a failed holder removed the dir it had created: again
                continue
            raise StorageError(f"{directory}: cannot create the output dir for {what}: it keeps vanishing") from None
        except OSError as e:
            raise StorageError(f"{directory}: cannot create the output dir for {what}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{directory}: in use by {_holder(path)}; {what} refused (nothing was changed)"
                ) from None
            raise StorageError(f"{path}: cannot lock: {e.strerror or e}") from None
        if _names(path, fd):
            break
        os.close(fd)  # locked a file its failed holder had just removed: start again on the path
    else:
        raise StorageError(f"{path}: cannot lock: the lock file keeps being replaced")
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with contextlib.suppress(OSError):  # the holder line is a courtesy: never fail on it
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        except BaseException:
            _remove_if_unused(directory, path, lock_existed, created)  # still holding the lock
            raise
    finally:
        os.close(fd)  # releases the flock


_ATTEMPTS = 5


def _missing_dirs(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    missing = []
    d = directory.absolute()
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    return missing


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _remove_if_unused(directory: Path, path: Path, lock_existed: bool, created: list[Path]) -> None:
    """A failed command removes what it created when nothing else is there: the lock file (if it
    created it and the dir holds nothing else), then the dirs it created, while empty."""
    with contextlib.suppress(OSError):
        if lock_existed or [p.name for p in directory.iterdir()] != [LOCK_NAME]:
            return
        os.unlink(path)
        for d in created:
            os.rmdir(d)  # raises (and stops) at the first dir that is not empty


__all__ = ["LOCK_NAME", "exclusive_dir_lock"]
