"""Object storage for Python callers: `s3://bucket/key` URLs through the one storage layer
(`tinyllama._core.Bucket`, rust/storage: the `object_store` engine, credentials and endpoint from
the standard `AWS_*` environment, retries with backoff, whole-object writes verified after the
write, downloads through `NAME.part` checked against the listed size and ETag).

What lives here is what Python needs on top: telling URLs from paths, and moving a directory
of files (a checkpoint) to and from a prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinyllama import _core


def is_url(path: str | os.PathLike[str] | None) -> bool:
    return isinstance(path, str) and "://" in path


def bucket(url: str) -> tuple[_core.Bucket, str]:
    """The bucket of `url` and the key it names (a bad URL is a `StorageError` naming it)."""
    b = _core.Bucket(url)
    return b, b.prefix


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def upload_dir(b: _core.Bucket, local: Path, key: str, last: tuple[str, ...] = (),
               skip: frozenset[str] = frozenset()) -> list[str]:
    """Upload every file under `local` to `key/REL`, the names in `last` after all the others
    (in that order): a reader that trusts `last` never sees the rest half written. Entries of
    `local` named in `skip` (and .tmp / .part files) are left out."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith((".tmp", ".part"))
                   and p.relative_to(local).parts[0] not in skip)
    rel = [p.relative_to(local).as_posix() for p in files]
    order = [r for r in rel if r not in last] + [r for r in last if r in rel]
    for r in order:
        b.upload(str(local / r), join(key, r))
    return order


def download_dir(b: _core.Bucket, key: str, local: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Download every object under `key/` into `local` (each through `.part`, checked against
    its listed size and ETag)."""
    prefix = join(key) + "/"
    got = []
    for k, size, etag in b.list(key):
        rel = k[len(prefix):] if k.startswith(prefix) else None
        if not rel or rel in skip:
            continue
        b.download(k, str(local / rel), size, etag)
        got.append(rel)
    return got


__all__ = ["bucket", "download_dir", "is_url", "join", "upload_dir"]
