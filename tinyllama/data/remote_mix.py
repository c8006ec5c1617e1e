"""A mix in a bucket: `mix build --out s3://bucket/mixes/NAME` and `Mix("s3://...", cache_dir=...)`.

Building: the build runs in a local work dir (`$TINYLLAMA_CACHE/mix-builds/<hash of the URL>`, so
a killed build resumes there), then every file of the mix is uploaded whole and verified, and
`mix.json` last: a reader never sees a mix without its lock, nor a lock whose files are not all
there. A second build on the same prefix is refused before it writes anything: the build holds
the prefix's lease (`storage.Lease`: `.lease`, a conditional create, renewed while the build runs)
with a token kept in its work dir, so a rerun of the killed build (same work dir) takes its own
lease back, a build elsewhere is refused while the lease is live and may take it over once it
has not been renewed for `TINYLLAMA_LEASE_TTL_S` (300 s). The lease is removed when the build ends.

Reading (`tinyllama.Mix(url, cache_dir=DIR, cache_bytes=N)`): `cached_mix(url, cache_dir)`
fetches only the mix's small files (lock, schedules, tokenizer, manifests, reports: each through
`.part`, checked against its listed size and ETag, the lock's seal and pins checked) into
`DIR/NAME-<lock digest>`, published by one rename under a file lock the ranks of a node share.
No shard is fetched then: `_core.ShardCache` (rust/mix/shard_cache.rs) fetches each shard the
first time a read needs it (in the loader's worker threads, ahead of the step), verifies it
against its manifest entry and its checksum before publishing it into that dir, shares it
between the ranks of the node, and evicts the least recently used shards of `DIR` past
`cache_bytes`.

`mix build --ray --out s3://...` builds without a shared filesystem and publishes with `publish`
too: see `tinyllama.data.ray_bucket`.
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


def cached_mix(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local dir of the mix at `url` holding its pinned files (fetched if needed), where its
    shards are then fetched one by one on first use (see the module doc)."""
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
            return final
        objects = {rel: v for rel, v in storage.listing(b, key).items() if not _shard_or_aside(rel)}
        tmp = root / f".{final.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for rel in sorted(objects, key=lambda rel: rel == "mix.json"):  # mix.json last
                size, etag = objects[rel]
                b.download(storage.join(key, rel), str(tmp / rel), size, etag)
            if (tmp / "mix.json").read_bytes() != lock:
                raise StorageError(f"{b.url(key)}: mix.json changed while the mix was fetched (a build is "
                                   f"publishing there?); retry")
            _core.verify_mix(str(tmp))  # the lock's seal and every pinned file's sha256
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / CACHE_MARK).touch()
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final


def _shard_or_aside(rel: str) -> bool:
    """A shard (fetched on first use, not with the metadata) or a file beside a mix, not of it."""
    parts = rel.split("/")
    return parts[0] in NOT_PUBLISHED or (len(parts) == 3 and parts[0] == "corpora" and parts[2].endswith(".bin"))


__all__ = ["build_to_bucket", "cached_mix", "publish", "work_dir"]
