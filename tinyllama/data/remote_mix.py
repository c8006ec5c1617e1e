"""A mix in a bucket: `mix build --out s3://bucket/mixes/NAME` and `Mix("s3://...", cache_dir=...)`.

Building: the build runs in a local work dir (`$TINYLLAMA_CACHE/mix-builds/<hash of the URL>`, so
a killed build resumes there), then every file of the mix is uploaded whole and verified, and
`mix.json` last: a reader never sees a mix without its lock, nor a lock whose files are not all
there. A second build on the same prefix is refused before it writes anything: the build holds
the prefix's lease (`storage.Lease`: `.lease`, a conditional create, renewed while the build runs)
with a token kept in its work dir, so a rerun of the killed build (same work dir) takes its own
lease back, a build elsewhere is refused while the lease is live and may take it over once it
has not been renewed for `TINYLLAMA_LEASE_TTL_S` (300 s). The lease is removed when the build ends.

Reading: `cached_mix(url, cache_dir, cache_bytes)` fetches the mix into
`cache_dir/NAME-<lock digest>` (each object through `.part`, checked against its listed size and
ETag; the whole mix verified, every shard's checksum included, before it is published by one
rename; the ranks of a node share it under a file lock) and returns that local dir, which
`tinyllama.Mix` then reads like any other. `cache_bytes` bounds the cache: mixes not used the
longest are evicted to make room; a mix larger than the budget is refused in one line.

Not yet: streaming inputs from a bucket (`paths = ["s3://..."]`), `--ray` builds straight into a
bucket, and fetching only the shards a rank's steps need (a mix is fetched whole).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from tinyllama import _core, storage
from tinyllama.errors import SpecError, StorageError

NOT_PUBLISHED = {"build.log", ".lock", storage.LEASE}  # beside a mix, never part of it
CACHE_MARK = ".tinyllama-mix-cache"


def cache_root() -> Path:
    return Path(os.environ.get("TINYLLAMA_CACHE") or Path.home() / ".cache" / "tinyllama")


def work_dir(url: str) -> Path:
    """Where a build for `url` runs (stable per URL, so a rerun resumes)."""
    return cache_root() / "mix-builds" / hashlib.sha256(url.encode()).hexdigest()[:16]


def publish(b, key: str, local: Path, force: bool) -> bool:
    """Upload the built mix in `local` to `key`: every file but mix.json, then mix.json. False
    when the bucket already holds this very mix."""
    lock = (local / "mix.json").read_bytes()
    remote = b.head(storage.join(key, "mix.json"))
    if remote is not None:
        theirs = b.get(storage.join(key, "mix.json"))
        if theirs == lock:
            return False
        if not force:
            name = json.loads(theirs).get("name")
            raise SpecError(f"{b.url(key)}: holds a mix of another spec ({name!r}); pass --force to replace it "
                            f"(nothing was written)")
        b.delete(storage.join(key, "mix.json"))  # readers stop trusting the old files first
    storage.upload_dir(b, local, key, last=("mix.json",), skip=NOT_PUBLISHED | {".staging"})
    return True


def build_to_bucket(spec_path, url: str, workers: int | None, *, force: bool = False, **kw) -> dict:
    """`mix build --out s3://...`: build locally, then publish (see the module doc)."""
    from tinyllama.data.build import build_mix

    b, key = storage.bucket(url)
    local = work_dir(url)
    local.mkdir(parents=True, exist_ok=True)
    with storage.Lease(b, key, local / ".lease-token", "mix build"):
        summary = build_mix(spec_path, local / "mix", workers, force=force, **kw)
        summary["uploaded"] = publish(b, key, local / "mix", force)
    summary["out"] = url
    return summary


def cached_mix(url: str, cache_dir: str | os.PathLike[str] | None = None, cache_bytes: int | None = None) -> Path:
    """The local copy of the mix at `url` (fetched if needed; see the module doc)."""
    b, key = storage.bucket(url)
    try:
        lock = b.get(storage.join(key, "mix.json"))
    except StorageError as e:
        raise StorageError(f"{b.url(key)}: not a built mix ({str(e).split(': ', 1)[-1]}: no mix.json)") from None
    name = json.loads(lock).get("name", "mix")
    root = Path(cache_dir) if cache_dir else cache_root() / "mixes"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{hashlib.sha256(lock).hexdigest()[:16]}"
    with open(root / f".{final.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the ranks of a node: one fetches, the others wait and share
        if (final / "mix.json").is_file() and (final / "mix.json").read_bytes() == lock:
            (final / CACHE_MARK).touch()
            return final
        objects = [o for o in b.list(key) if o[0][len(key):].strip("/") not in NOT_PUBLISHED]
        need = sum(size for _, size, _ in objects)
        if cache_bytes:
            if need > cache_bytes:
                raise StorageError(f"{b.url(key)}: the mix holds {need:,} bytes, more than mix_cache_bytes "
                                   f"({cache_bytes:,}); raise it or choose another mix_cache")
            _evict(root, cache_bytes - need, keep=final)
        tmp = root / f".{final.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            prefix = key.strip("/") + "/" if key else ""
            for k, size, etag in sorted(objects, key=lambda o: o[0].endswith("/mix.json")):  # mix.json last
                b.download(k, str(tmp / k[len(prefix):]), size, etag)
            if (tmp / "mix.json").read_bytes() != lock:
                raise StorageError(f"{b.url(key)}: mix.json changed while the mix was fetched (a build is "
                                   f"publishing there?); retry")
            _core.verify_mix(str(tmp), deep=True)  # every pinned file and every shard's checksum
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / CACHE_MARK).touch()
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final


def _evict(root: Path, budget: int, keep: Path) -> None:
    """Remove the cached mixes of `root` used longest ago until the rest fits in `budget`."""
    cached = [p for p in root.iterdir() if p.is_dir() and (p / CACHE_MARK).is_file() and p != keep]
    size = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in cached}
    for p in sorted(cached, key=lambda p: (p / CACHE_MARK).stat().st_mtime):
        if sum(size.values()) <= budget:
            break
        shutil.rmtree(p, ignore_errors=True)
        size.pop(p)


__all__ = ["build_to_bucket", "cached_mix", "publish", "work_dir"]
