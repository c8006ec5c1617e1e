"""Object storage for Python callers: `s3://bucket/key` URLs through the one storage layer
(`tinyllama._core.Bucket`, rust/storage: the `object_store` engine, credentials and endpoint from
the standard `AWS_*` environment, retries with backoff, whole-object writes verified after the
write, downloads through `NAME.part` checked against the listed size and ETag).

What lives here is what Python needs on top: telling URLs from paths, moving a directory of
files (a checkpoint) to and from a prefix, and the lease that makes one writer own a prefix.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from tinyllama import _core
from tinyllama.errors import StorageError


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


def listing(b: _core.Bucket, key: str) -> dict[str, tuple[int, str | None]]:
    """REL -> (size, etag) of every object under `key/` (REL: its key below that prefix; the
    whole bucket's keys for an empty `key`)."""
    prefix = join(key) + "/" if join(key) else ""
    return {k[len(prefix):]: (size, etag) for k, size, etag in b.list(key) if k.startswith(prefix) and k != prefix}


def download_dir(b: _core.Bucket, key: str, local: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Download every object under `key/` into `local` (each through `.part`, checked against
    its listed size and ETag), but those named in `skip` or under a dir named there."""
    got = []
    for rel, (size, etag) in listing(b, key).items():
        if rel in skip or rel.split("/", 1)[0] in skip:
            continue
        b.download(join(key, rel), str(local / rel), size, etag)
        got.append(rel)
    return got


LEASE = ".lease"


def lease_ttl() -> float:
    """Seconds after its last renewal that a lease is taken to be dead (`TINYLLAMA_LEASE_TTL_S`)."""
    return float(os.environ.get("TINYLLAMA_LEASE_TTL_S") or 300)


class Lease:
    """One writer owns a prefix: `PREFIX/.lease`, a small JSON object {token, holder, renewed}.

    Taking it is a conditional create (`If-None-Match: *`); a lease that names this writer's token
    (kept in `token_file`, beside the writer's local state, so a rerun of the same build or run
    takes its own lease back) is renewed in place. A lease whose holder has not renewed it for
    `lease_ttl()` seconds (default 300) is dead and may be taken over; renewals and takeovers
    are conditional replaces (`If-Match` the version read), so of two writers racing exactly one
    wins. While held, a daemon thread renews it every ttl/5 s; `release` deletes it. Anything
    else is refused in one line naming the prefix, the holder and how long ago it renewed,
    before the refused writer writes anything. Staleness compares the holder's clock with ours:
    a skew well under the ttl is assumed."""

    def __init__(self, b: _core.Bucket, key: str, token_file: Path, what: str):
        self.b, self.key, self.token_file, self.what = b, join(key, LEASE), Path(token_file), what
        self.prefix_url = b.url(key)
        self.token = None
        self.lost: str | None = None  # why a renewal found the lease taken by another writer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "holder": f"{socket.gethostname()}:{os.getpid()}",
                           "what": self.what, "renewed": time.time()}).encode()

    def _read(self) -> tuple[dict, str | None] | None:
        """(the lease's JSON, its ETag), or None when there is none."""
        head = self.b.head(self.key)
        if head is None:
            return None
        try:
            body = json.loads(self.b.get(self.key, head[2]))
        except StorageError:
            return self._read() if self.b.head(self.key) is not None else None  # replaced meanwhile
        except ValueError:
            body = {}
        return (body if isinstance(body, dict) else {}), head[2]

    def acquire(self) -> Lease:
        tf = self.token_file
        self.token = tf.read_text().strip() if tf.is_file() else uuid.uuid4().hex
        for _ in range(3):
            if self.b.put_if_absent(self.key, self._body()):
                break
            found = self._read()
            if found is None:
                continue  # released meanwhile: try to create it again
            held, etag = found
            age = time.time() - float(held.get("renewed") or 0)
            if held.get("token") != self.token and age < lease_ttl():
                raise StorageError(
                    f"{self.prefix_url}: held by another {held.get('what') or 'writer'} "
                    f"({held.get('holder', '?')}, lease {self.b.url(self.key)} renewed {age:.0f} s ago); "
                    f"nothing was written. If that writer is dead, its lease expires {lease_ttl():.0f} s after "
                    f"its last renewal: rerun then, or delete the lease")
            if etag and self.b.put_if_match(self.key, self._body(), etag):
                break  # ours again, or a dead writer's taken over
        else:
            raise StorageError(f"{self.prefix_url}: could not take the lease {self.b.url(self.key)} "
                               f"(it kept changing); nothing was written")
        tf.parent.mkdir(parents=True, exist_ok=True)
        tf.write_text(self.token)
        self._thread = threading.Thread(target=self._renew_loop, name="tinyllama-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Renew now; False (and `lost` says why) when another writer holds the lease."""
        found = self._read()
        if found is not None and found[0].get("token") == self.token and found[1]:
            if self.b.put_if_match(self.key, self._body(), found[1]):
                return True
        self.lost = f"{self.prefix_url}: the lease {self.b.url(self.key)} was taken by another writer"
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(lease_ttl() / 5):
            try:
                if not self.renew():
                    return
            except StorageError:
                pass  # a failed renewal is retried at the next tick; the ttl leaves room for several

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.token is None or self.lost:
            return
        found = self._read()
        if found is not None and found[0].get("token") == self.token:
            self.b.delete(self.key)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LEASE", "Lease", "bucket", "download_dir", "is_url", "join", "lease_ttl", "listing", "upload_dir"]
