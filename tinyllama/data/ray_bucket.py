"""`mix build --ray --out s3://bucket/mixes/NAME`: the Ray build with no shared filesystem.

The one owner of moving a stage's staged files between a bucket and a task's local disk. The
build's staging lives at `URL/.staging/` with the layout of a local `OUT/.staging/` (the
identity file, then `<corpus>/fingerprints/`, `dedup/`, `dedup.bin`, `parts/`, `packed/`...).
Every Ray task (`staged_plan`):

1. makes its own local temp dir and takes it as the build's `out` (the identity leaves `out`
   out, so the task's plan checks against the driver's staging identity as on a shared disk),
   and fetches the tokenizer the driver put at `.staging/tokenizer.*` into it (the identity
   pins the tokenizer's sha256, so a task's plan refuses any other bytes): no worker needs the
   spec's tokenizer file;
2. pulls `.staging/identity` and only the staged files its stage reads, plus the outputs it
   would commit when they are already in the bucket (then the Rust stage finds them, verifies
   them and reports "resumed": a retried task is a no-op that writes nothing);
3. runs the same Rust stage as the local build;
4. pushes, each object whole, the files the stage committed (new or changed ones, in the order
   it committed them: a sidecar written after its part is uploaded after it) and
5. removes its temp dir, also when the stage failed (the dirs of workers killed mid-task are
   swept by the next task on the node).

What each stage reads (paths under `.staging/<corpus>/`): fingerprint - its own store (only
to resume); exact - every store; bands - every store and the exact groups; dedup - the stores
and `dedup/` (or just the decision when it is committed); tokenize - the decision and its own
part; layout - every part (it verifies them all); pack - only the parts its shard's slices
cover (`pack_layout`'s `slices`) and its own staged shard. The driver (`ray_build`) pulls what
`finish` reads (every part, the packed shards and the dedup reports) into a local dir, runs
`finish` there and publishes like `remote_mix.build_to_bucket`, mix.json last; the staging
objects are removed only after mix.json is up.

Workers reach the bucket through the standard `AWS_*` environment, as the driver does: set it
on every node (a local Ray started by the build inherits the driver's). With the inputs in the
bucket too, nothing of the build is read from or written to a shared filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinyllama import _core, storage

STAGING = ".staging"
IDENTITY = "identity"
BUCKET_KEY = "staging_bucket"  # the config key naming the mix URL (taken out before Rust sees it)


def staging_key(key: str) -> str:
    return storage.join(key, STAGING)


def tokenizer_name(path: str | os.PathLike[str]) -> str:
    """`.staging/tokenizer.EXT`: the spec's tokenizer, for the workers (its extensions kept:
    `.json.zst` is read compressed)."""
    return "tokenizer" + "".join(Path(path).suffixes)


# ---- what each stage reads: a predicate over paths relative to `.staging/<corpus>/` ---------


def _fp(i: int) -> tuple[str, str]:
    return f"fingerprints/{i:06}.fp", f"fingerprints/{i:06}.keys"


def _part(i: int) -> tuple[str, str]:
    return f"parts/{i:06}.bin", f"parts/{i:06}.json"


def reads(stage: str, listed: set[str], **arg) -> Callable[[str], bool]:
    """The staged files (relative to the corpus's staging dir, among `listed`, what the bucket
    holds there) that `stage` reads, or would commit and can resume from."""
    stores = lambda rel: rel.startswith("fingerprints/")  # noqa: E731
    if stage == "fingerprint":
        return set(_fp(arg["file"])).__contains__
    if stage == "exact":
        return lambda rel: stores(rel) or rel == "dedup/exact.bin"
    if stage == "bands":
        lo, hi = arg["bands"]
        return lambda rel: stores(rel) or rel in ("dedup/exact.bin", f"dedup/bands-{lo:03}-{hi:03}.bin")
    if stage == "dedup":
        if "dedup.bin" in listed:  # committed: the stage only opens the decision
            return {"dedup.bin"}.__contains__
        return lambda rel: stores(rel) or rel.startswith("dedup/")
    if stage == "tokenize":
        return {"dedup.bin", *_part(arg["file"])}.__contains__
    if stage == "layout":
        return lambda rel: rel.startswith("parts/")
    if stage == "pack":
        shard = json.loads(arg["shard_json"])
        wanted = {f"packed/{shard['name']}"}
        for part, _first, _end in shard["slices"]:
            wanted.update(_part(part))
        return wanted.__contains__
    if stage == "finish":
        return lambda rel: rel.startswith(("parts/", "packed/")) or rel == "dedup_report.parquet"
    raise ValueError(f"unknown stage {stage!r}")


# ---- sync down / run / sync up --------------------------------------------------------------


def pull(b: _core.Bucket, key: str, local: Path, corpus: str | None, stage: str, **arg) -> None:
    """Download into the local staging dir `local` the bucket staging's identity and what
    `stage` reads of corpus `corpus` (every corpus's, for `finish`)."""
    stage_key = staging_key(key)
    b.download(storage.join(stage_key, IDENTITY), str(local / IDENTITY), None, None)
    listing = storage.listing(b, stage_key)
    names = [corpus] if corpus is not None else sorted({rel.split("/", 1)[0] for rel in listing if "/" in rel})
    for name in names:
        under = {rel[len(name) + 1:]: v for rel, v in listing.items() if rel.startswith(name + "/")}
        wanted = reads(stage, set(under), **arg)
        for rel, (size, etag) in sorted(under.items()):
            if wanted(rel):
                b.download(storage.join(stage_key, name, rel), str(local / name / rel), size, etag)


def _snapshot(local: Path) -> dict[str, tuple[int, int]]:
    """rel path -> (size, mtime_ns) of the committed files under `local` (the scratch
    `dedup-work/` and uncommitted `.tmp` / `.part` files are no staged output)."""
    found = {}
    for p in local.rglob("*"):
        rel = p.relative_to(local).as_posix()
        if p.is_file() and not p.name.endswith((".tmp", ".part")) and "dedup-work" not in rel.split("/"):
            st = p.stat()
            found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def push(b: _core.Bucket, key: str, local: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """Upload (each object whole) the files under the local staging dir `local` that are new or
    changed since `before`, in the order they were committed. Returns their relative paths."""
    now = _snapshot(local)
    changed = sorted((m, rel) for rel, (s, m) in now.items() if before.get(rel) != (s, m))
    for _, rel in changed:
        b.upload(str(local / rel), storage.join(staging_key(key), rel))
    return [rel for _, rel in changed]


@contextmanager
def staged_plan(config_json: str, load_plan: Callable[[str], object], stage: str, corpus: int,
                **arg) -> Iterator[object]:
    """A Ray task's plan for `stage` of corpus `corpus`, in its own local temp dir synced with the
    bucket named in the config (see the module doc): pulled before, pushed after the `with`
    body ran the stage, the temp dir removed either way."""
    config = json.loads(config_json)
    url = config.pop(BUCKET_KEY)
    b, key = storage.bucket(url)
    _sweep_dead_task_dirs()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TASK_DIR}{os.getpid()}-"))
    try:
        config["out"] = str(tmp)
        _note_task_dir(tmp)
        name = config["corpora"][corpus]["name"]
        local = tmp / STAGING
        (local / name / "parts").mkdir(parents=True)
        (local / name / "fingerprints").mkdir()
        pull(b, key, local, name, stage, **arg)
        name = tokenizer_name(config["tokenizer"])
        config["tokenizer"] = str(tmp / name)
        b.download(storage.join(staging_key(key), name), config["tokenizer"], None, None)
        before = _snapshot(local)
        yield load_plan(json.dumps(config, sort_keys=True))
        push(b, key, local, before)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TASK_DIR = "tinyllama-ray-task-"  # + the worker's pid + "-" + a random suffix


def _sweep_dead_task_dirs() -> None:
    """Remove the temp dirs that tasks of this node's dead worker processes left behind (a worker
    SIGKILLed mid-task never reaches its clean-up): only dirs named like a task's, and only when
    the process that made one is gone."""
    for d in Path(tempfile.gettempdir()).glob(f"{TASK_DIR}*-*"):
        try:
            pid = int(d.name[len(TASK_DIR):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue  # not a name this module makes
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def _note_task_dir(tmp: Path) -> None:
    """For the tests: append each task's temp dir to `TINYLLAMA_RAY_TASK_DIRS` (a file), so
    they can check that no two tasks shared a dir."""
    record = os.environ.get("TINYLLAMA_RAY_TASK_DIRS")
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"{os.uname().nodename}:{os.getpid()}:{tmp}\n")


# ---- the driver's side ----------------------------------------------------------------------


def upload_identity(b: _core.Bucket, key: str, local_staging: Path, tokenizer: str | os.PathLike[str]) -> None:
    """Make the bucket staging this build's: staging of another build (another identity, left by
    a build killed on this prefix) is removed first, as a local build replaces it; then the
    tokenizer the tasks load (`staged_plan`)."""
    ours = (local_staging / IDENTITY).read_bytes()
    id_key = storage.join(staging_key(key), IDENTITY)
    if not (b.head(id_key) is not None and b.get(id_key) == ours):
        drop_staging(b, key)
        b.put(id_key, ours)
    b.upload(str(tokenizer), storage.join(staging_key(key), tokenizer_name(tokenizer)))


def finish_and_publish(b: _core.Bucket, key: str, plan, out: Path, force: bool) -> dict:
    """The driver's end of the build: pull what `finish` reads into the local build dir `out`
    (whose staging `plan` prepared), run `finish` there, publish the mix (mix.json last, as
    `remote_mix.build_to_bucket` does) and only then remove the bucket's staging. Returns
    `finish`'s summary."""
    from tinyllama.data.remote_mix import publish

    pull(b, key, out / STAGING, None, "finish")
    finished = plan.finish()
    publish(b, key, out, force)
    drop_staging(b, key)
    return finished


def drop_staging(b: _core.Bucket, key: str) -> None:
    """Remove the build's staging objects (`URL/.staging/`): only what a build put there; the
    identity goes last, so a kill half way leaves a staging a rerun recognises."""
    stage_key = staging_key(key)
    keys = sorted(k for k, _, _ in b.list(stage_key))
    id_key = storage.join(stage_key, IDENTITY)
    for k in [k for k in keys if k != id_key] + [k for k in keys if k == id_key]:
        b.delete(k)


__all__ = ["BUCKET_KEY", "drop_staging", "finish_and_publish", "pull", "push", "reads", "staged_plan",
           "upload_identity"]
