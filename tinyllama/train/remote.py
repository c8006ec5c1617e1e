"""Checkpoints in a bucket: `run.upload_to = "s3://bucket/runs/NAME"`.

    URL/checkpoints/step-N/     the files of local checkpoints/step-N/ (DCP shards, rng/,
                                trainer.json), then checksums.json, then COMMITTED
    URL/checkpoints/latest      "step-N": the newest checkpoint whose upload completed

The run owns the prefix while it runs: before anything is written there, rank 0 takes its lease
(`storage.Lease`, `URL/.lease`, renewed in the background; the token lives in the run's out dir,
so a rerun or `--resume` of the same run takes it back). A second run on the same prefix is
refused in one line while the lease is live; a new run (no `--resume`) on a prefix that holds
committed checkpoints is refused as a local out dir holding them is. A lease left by a dead run
may be taken over `TINYLLAMA_LEASE_TTL_S` (300 s) after its last renewal, so a preempted run
resumes on a new machine with an empty disk. Should another writer take the lease anyway, the
uploads stop with one warning line.

Each committed local checkpoint is uploaded by rank 0 in a background thread (one upload in
flight; the next save first waits for it, so the local keep-last never prunes a checkpoint still
being read), so the step loop stalls no longer than the local save. The order is the commit
protocol: a step is trusted only with its COMMITTED marker, written after every file and the
checksums; `latest` moves after it; keep-last then deletes only committed steps older than this
one (the newest good one is never deleted). A failed upload is one warning line (the local
checkpoint is intact; the next one is uploaded whole).

When the nodes of a run do not share `out` (train/out_dir.py), each node's local rank 0 uploads its
node's part of the checkpoint (its ranks' files) and then `step-N/.parts/rank-R` holding the digest
of the checkpoint's checksums.json (the same on every node, and another for every other save, so a
marker left by an earlier attempt at the same step is never mistaken for this one), or `error:
WHY` when its upload failed. Rank 0 uploads its own part, waits for every other node's marker
(`TINYLLAMA_UPLOAD_WAIT_S`, 1800 s), and only then writes checksums.json, COMMITTED and `latest`:
the bucket is the one place where the checkpoint is whole.

Reading back (`fetch`): the newest committed step (or the one a URL names) is downloaded into a
local `step-N.tmp/` (every object through `.part`, checked against its listed size and ETag),
verified against its checksums, then renamed to `step-N/`. `--resume` with no local checkpoint
takes the newest bucket checkpoint that verifies; `branch_from` and `export` accept a bucket URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from tinyllama import storage
from tinyllama.errors import CheckpointError, StorageError
from tinyllama.train.checkpoint import CHECKSUMS, _write_atomic, verify

COMMITTED = "COMMITTED"
PARTS = ".parts"  # step-N/.parts/rank-R: the node of rank R has uploaded its part (out not shared)
_STEP = re.compile(r"^step-(\d+)$")


def committed_steps(b, key: str) -> list[int]:
    """Steps under `key` (a checkpoints prefix) whose COMMITTED marker exists, ascending."""
    steps = set()
    for rel in storage.listing(b, key):
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == COMMITTED and (m := _STEP.match(parts[0])):
            steps.add(int(m.group(1)))
    return sorted(steps)


class Uploader:
    """Background uploads of committed checkpoints to `url` (run.upload_to), by the keeper of an
    out dir. `rank` 0 commits them; `others`: the ranks whose node uploads its own part of each
    checkpoint (the nodes do not share out), waited for before the commit. Another `rank` (such a
    node's local rank 0) uploads its node's part and marks it done."""

    def __init__(self, url: str, keep_last: int, warn, *, rank: int = 0, others: list[int] | tuple = ()):
        self.url, self.keep_last, self.warn = url, keep_last, warn
        self.rank, self.others = rank, list(others)
        self.bucket, key = storage.bucket(url)
        self.key = storage.join(key, "checkpoints")
        self._prefix = key
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self.lease: storage.Lease | None = None

    def claim(self, run_dir: Path, resume: bool) -> None:
        """Take the prefix for this run (see the module doc), before anything is written there."""
        if not resume and (steps := committed_steps(self.bucket, self.key)):
            raise CheckpointError(
                f"{self.url} already holds checkpoints (latest: step-{steps[-1]}): pass --resume to continue "
                f"that run, or choose another run.upload_to")
        self.lease = storage.Lease(self.bucket, self._prefix, Path(run_dir) / ".upload-lease", "training run")
        self.lease.acquire()

    def submit(self, path: Path) -> None:
        """Upload committed checkpoint `path` (a `step-N/` dir) in the background."""
        self.wait()
        self._thread = threading.Thread(target=self._upload, args=(Path(path),), name="tinyllama-upload",
                                        daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the upload in flight (if any) is done; a failure is one warning line."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            kept = ("the nodes keep their parts of it" if self.others or self.rank != 0 else
                    "the local checkpoint is intact")
            self.warn(f"warning: {self._error} ({kept}; the next one is uploaded whole)")
            self._error = None

    def close(self) -> None:
        """The run's end: the last upload done, the lease released."""
        self.wait()
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _upload(self, path: Path) -> None:
        try:
            if self.lease is not None and self.lease.lost:
                raise StorageError(f"{self.lease.lost}; uploads stopped")
            self.upload(path)
        except Exception as e:  # noqa: BLE001  (reported on the training thread, one line)
            self._error = f"upload of {path.name} to {self.url} failed: {e}".replace("\n", "; ")

    def upload(self, path: Path) -> None:
        step = path.name
        key = storage.join(self.key, step)
        if self.rank != 0:
            self._upload_part(path, key)
            return
        if not self.others:
            storage.upload_dir(self.bucket, path, key, last=(CHECKSUMS,))
        else:
            storage.upload_dir(self.bucket, path, key, skip=frozenset({CHECKSUMS}))
            self._wait_for_parts(key, _sums_digest(path))
            self.bucket.upload(str(path / CHECKSUMS), storage.join(key, CHECKSUMS))
        self.bucket.put(storage.join(key, COMMITTED), json.dumps({"step": int(step[5:])}).encode())
        self.bucket.put(storage.join(self.key, "latest"), (step + "\n").encode())
        now = int(step[5:])
        older = [s for s in committed_steps(self.bucket, self.key) if s < now]
        for old in older[: max(0, len(older) - (self.keep_last - 1))]:
            prefix = storage.join(self.key, f"step-{old}")
            # the marker first: a step without it is never trusted, whatever is left of it
            self.bucket.delete(storage.join(prefix, COMMITTED))
            for k, _, _ in self.bucket.list(prefix):
                self.bucket.delete(k)
        for r in self.others:  # done with: this step is committed
            self.bucket.delete(_part_marker(key, r))

    def _upload_part(self, path: Path, key: str) -> None:
        """Another node's part: its files, then its marker (the error, should they fail)."""
        marker = _part_marker(key, self.rank)
        try:
            storage.upload_dir(self.bucket, path, key, skip=frozenset({CHECKSUMS}))
        except Exception as e:  # noqa: BLE001  (told to rank 0, then reported here)
            try:
                self.bucket.put(marker, f"error: {e}".replace("\n", "; ").encode())
            except StorageError:
                pass  # rank 0 gives up waiting instead
            raise
        self.bucket.put(marker, _sums_digest(path).encode())

    def _wait_for_parts(self, key: str, digest: str) -> None:
        """Until every other node's marker for this save is there (or one says its upload failed)."""
        deadline = time.monotonic() + float(os.environ.get("TINYLLAMA_UPLOAD_WAIT_S", "1800"))
        pending, delay = set(self.others), 0.05
        while pending:
            for r in sorted(pending):
                marker = _part_marker(key, r)
                if self.bucket.head(marker) is None:
                    continue
                got = self.bucket.get(marker).decode(errors="replace")
                if got.startswith("error: "):
                    raise StorageError(f"the node of rank {r} could not upload its part ({got[7:]}); not committed")
                if got == digest:
                    pending.discard(r)
            if pending and time.monotonic() > deadline:
                step = key.rsplit("/", 1)[-1]
                raise StorageError(f"the node of rank {min(pending)} did not upload its part of {step} within "
                                   f"TINYLLAMA_UPLOAD_WAIT_S; not committed")
            if pending:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


def _part_marker(step_key: str, rank: int) -> str:
    """`step-N/.parts/rank-R`: the node of rank R has uploaded its part of step N (or failed to)."""
    return storage.join(step_key, PARTS, f"rank-{rank}")


def _sums_digest(path: Path) -> str:
    """Which save a part belongs to: the digest of the checkpoint's checksums.json."""
    return hashlib.blake2b((path / CHECKSUMS).read_bytes(), digest_size=16).hexdigest()


def _checkpoints_key(b, key: str) -> tuple[str, int | None]:
    """(the checkpoints prefix, the step a URL names or None) for a URL naming a run, its
    checkpoints prefix, or one step-N."""
    parts = key.strip("/").split("/") if key else []
    if parts and _STEP.match(parts[-1]):
        return "/".join(parts[:-1]), int(parts[-1][5:])
    if parts and parts[-1] == "checkpoints":
        return key, None
    return storage.join(key, "checkpoints"), None


def fetch(url: str, dest: Path, newest_first: bool = True) -> Path:
    """Download the checkpoint `url` names (a step-N, or the newest committed one under a run /
    checkpoints URL that verifies) into `dest/step-N/`; returns that local path."""
    b, key = storage.bucket(url)
    ckpts, step = _checkpoints_key(b, key)
    steps = committed_steps(b, ckpts)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{url}: no committed checkpoint there (no {COMMITTED} marker)")
        candidates = [step]
    else:
        candidates = sorted(steps, reverse=newest_first)
        if not candidates:
            raise CheckpointError(f"{url}: no committed checkpoint under {b.url(ckpts)}")
    whys = []
    for s in candidates:
        final = dest / f"step-{s}"
        if final.is_dir() and verify(final) is None:
            return final
        tmp = dest / f"step-{s}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        storage.download_dir(b, storage.join(ckpts, f"step-{s}"), tmp, skip=(COMMITTED, PARTS))
        why = verify(tmp)
        if why is None:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            return final
        whys.append(f"step-{s}: {why}")
        shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointError(f"{url}: no bucket checkpoint verifies ({'; '.join(whys)})")


def restore_into(url: str, ckpt_dir: Path) -> str | None:
    """`--resume` with no whole local checkpoint: the newest bucket checkpoint that verifies,
    fetched into `ckpt_dir` (and `latest` pointed at it). Its URL, or None when the bucket has
    none."""
    b, key = storage.bucket(url)
    ckpts, _ = _checkpoints_key(b, key)
    if not committed_steps(b, ckpts):
        return None
    path = fetch(b.url(ckpts), ckpt_dir)
    _write_atomic(ckpt_dir / "latest", path.name + "\n")
    return b.url(storage.join(ckpts, path.name))


def local_checkpoint(path: str, cache: Path) -> Path:
    """A checkpoint argument (`branch_from`, `export`): a local path as it is, a bucket URL
    fetched into `cache`."""
    if not storage.is_url(path):
        return Path(path)
    try:
        return fetch(path, cache)
    except OSError as e:
        raise StorageError(f"{cache}: cannot write the fetched checkpoint: {e.strerror or e}") from None


__all__ = ["COMMITTED", "Uploader", "committed_steps", "fetch", "local_checkpoint", "restore_into"]
