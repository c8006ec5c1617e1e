"""`mix build` on a Ray cluster, with the same bytes as the single-machine build.

The build's stages run as Ray tasks, each calling the same Rust core as the local build
(`_core.BuildPlan`, whose `build()` composition is the local path):

    fingerprint  one task per input file of a deduplicated corpus -> committed store
    exact        one task per deduplicated corpus (after its fingerprints) -> exact groups
    bands        one task per band partition of a near-deduplicated corpus (after its exact
                 groups): that partition's LSH band tables, sorted, spilled past
                 `dedup.memory`, candidates verified -> committed near-duplicate edges
    dedup        one task per deduplicated corpus (after its band partitions): connected
                 components, keep the earliest -> committed decision + report
    tokenize     one task per input file (after its corpus's dedup) -> committed staged part
    layout       one task per corpus (after its parts): cut the parts' document sequence, in
                 file order, into training and holdout shards (document lengths only)
    pack         one task per output shard (after its corpus's layout) -> committed staged shard
    finish       on the driver: move the shards into place, write the manifests, the schedule,
                 the tokenizer and, last, mix.json

Every per-file output is a pure function of (file, spec, tokenizer) and packing walks the
files in sorted order, so the result does not depend on the number of workers or on which
worker ran what. Every task commits atomically (tmp + fsync + rename) and is a no-op when its
output is committed, so Ray may retry a task whose worker died (`max_retries`) without
duplicating or losing documents; a killed driver reruns the same call and resumes from what
was committed.

The driver holds the output dir's exclusive lock (`OUT/.lock`, `tinyllama.lock`) for the
whole build, as the local build does: a second driver (or local build) on the same dir fails
at once naming the holder. The same rules for what `--out` may hold apply (see
`tinyllama.data.build`). The output dir (and the tokenizer, and inputs that are not in a bucket, at the
same absolute paths) must be on a filesystem every Ray worker sees (NFS, Lustre, a shared disk...): tasks write
their staged outputs there and the driver reads them back. Every node needs tinyllama installed.
With `out` a bucket URL no filesystem is shared: the staging lives in the bucket (the tokenizer too), each
task works in its own temp dir and the driver holds the prefix's lease (`tinyllama.data.ray_bucket`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinyllama import _core, storage
from tinyllama.data import ray_bucket
from tinyllama.data.build import naming_the_key, refuse_foreign_out, set_in_flight
from tinyllama.data.progress import human, reporter
from tinyllama.data.spec import load_spec
from tinyllama.errors import SpecError, TinyllamaError
from tinyllama.lock import exclusive_dir_lock

EXTRA = "tinyllama-forge[ray]"


class RayNotInstalledError(TinyllamaError):
    """The Ray build was asked for but Ray is not importable."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalledError(
            f"`mix build --ray` needs Ray, which is not installed ({e}): "
            f"pip install '{EXTRA}'  (the local build, without --ray, does not need it)"
        ) from None
    return ray


# ---- what runs inside the Ray workers -------------------------------------------------------

# One plan (tokenizer loaded, inputs discovered) per worker process and build, reused by every
# task that process runs.
_PLANS: dict[str, Any] = {}


def _plan(config_json: str):
    key = hashlib.sha256(config_json.encode()).hexdigest()
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _load_plan(config_json)
    return plan


def _load_plan(config_json: str):
    from tinyllama.data import word_rules

    config = json.loads(config_json)
    if word_rules.needed(name for c in config["corpora"] for name, _ in c.get("filters", [])):
        word_rules.ensure()  # this worker process's copy of the heuristic filters' rules
    return _core.BuildPlan(config_json)


@contextmanager
def _stage_plan(config_json: str, stage: str, corpus: int, **arg):
    """The plan a task runs its stage on: the shared one (the output dir is on a filesystem every
    worker sees), or, for a build into a bucket, one over the task's own local temp dir synced
    with the bucket's staging (`ray_bucket.staged_plan`)."""
    if ray_bucket.BUCKET_KEY not in json.loads(config_json):
        yield _plan(config_json)
        return
    with ray_bucket.staged_plan(config_json, _load_plan, stage, corpus, **arg) as plan:
        yield plan


def _inject(chaos: dict | None, stage: str, corpus: int, file: int | None) -> None:
    """Fault injection for the tests: once (a marker file says when it has happened), the
    matching task either raises (an application error: not retried, the build fails and a
    rerun resumes) or SIGKILLs its own worker process while it works (Ray retries the task)."""
    if not chaos or (chaos["stage"], chaos["corpus"], chaos.get("file")) != (stage, corpus, file):
        return
    try:
        fd = os.open(chaos["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if chaos["action"] == "raise":
        raise RuntimeError(f"injected failure in {stage} corpus {corpus} file {file}")
    delay = float(chaos.get("delay", 0.05))
    threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    chaos["_armed"] = True


def _hang_if_armed(chaos: dict | None) -> None:
    # The kill must land before the task reports success, or Ray would have nothing to retry.
    if chaos and chaos.get("_armed"):
        time.sleep(60)


def _fingerprint_task(config_json: str, corpus: int, file: int, chaos: dict | None) -> dict:
    _inject(chaos, "fingerprint", corpus, file)
    with _stage_plan(config_json, "fingerprint", corpus, file=file) as plan:
        out = plan.fingerprint(corpus, file)
    _hang_if_armed(chaos)
    return out


def _exact_task(config_json: str, corpus: int, chaos: dict | None, *_fingerprints: dict) -> dict:
    _inject(chaos, "exact", corpus, None)
    with _stage_plan(config_json, "exact", corpus) as plan:
        out = plan.dedup_exact(corpus)
    _hang_if_armed(chaos)
    return out


def _bands_task(config_json: str, corpus: int, part: int, bands: tuple[int, int], chaos: dict | None,
                _exact: dict) -> dict:
    _inject(chaos, "bands", corpus, part)
    with _stage_plan(config_json, "bands", corpus, bands=bands) as plan:
        out = plan.dedup_bands(corpus, *bands)
    _hang_if_armed(chaos)
    return out


def _dedup_task(config_json: str, corpus: int, partitions: int, chaos: dict | None, *_parts: dict) -> dict:
    _inject(chaos, "dedup", corpus, None)
    with _stage_plan(config_json, "dedup", corpus) as plan:
        out = plan.dedup(corpus, partitions)
    _hang_if_armed(chaos)
    return out


def _tokenize_task(config_json: str, corpus: int, file: int, chaos: dict | None, _dedup: Any) -> dict:
    _inject(chaos, "tokenize", corpus, file)
    with _stage_plan(config_json, "tokenize", corpus, file=file) as plan:
        out = plan.tokenize(corpus, file)
    _hang_if_armed(chaos)
    return out


def _layout_task(config_json: str, corpus: int, chaos: dict | None, *_parts: dict) -> list[str]:
    _inject(chaos, "layout", corpus, None)
    with _stage_plan(config_json, "layout", corpus) as plan:
        out = plan.pack_layout(corpus)
    _hang_if_armed(chaos)
    return out


def _pack_task(config_json: str, corpus: int, index: int, shard_json: str, chaos: dict | None) -> dict:
    _inject(chaos, "pack", corpus, index)
    with _stage_plan(config_json, "pack", corpus, shard_json=shard_json) as plan:
        out = plan.pack_shard(corpus, shard_json)
    _hang_if_armed(chaos)
    return out


# ---- the driver -----------------------------------------------------------------------------

class _Stage:
    def __init__(self, name: str):
        self.name, self.total, self.done, self.resumed = name, 0, 0, 0
        self.docs = self.tokens = self.bytes = self.removed = self.pairs = 0
        self.started = time.monotonic()
        self.last = self.started

    def add(self, result: dict) -> None:
        self.last = time.monotonic()
        self.done += 1
        self.resumed += bool(result.get("resumed"))
        self.docs += result.get("docs", 0)
        self.tokens += result.get("tokens", 0)
        self.bytes += result.get("bytes", 0)
        self.removed += result.get("exact_duplicates", 0) + result.get("near_duplicates", 0)
        self.pairs += result.get("pairs", 0)

    def line(self) -> str:
        if self.name == "dedup":
            return f"dedup: {self.done} tasks ({self.resumed} resumed), {human(self.removed)} duplicates removed"
        if self.name == "layout":
            return f"layout: {self.done} tasks"
        if self.name == "exact":
            return f"exact: {self.done} tasks ({self.resumed} resumed), {human(self.pairs)} exact duplicates"
        if self.name == "bands":
            return f"bands: {self.done} tasks ({self.resumed} resumed), {human(self.pairs)} near-duplicate edges"
        span = max(self.last - self.started, 1e-9)
        rate = f", {self.docs / span:,.0f} docs/s" + (f", {self.tokens / span / 1e6:.2f}M tok/s" if self.tokens else "")
        size = f", {human(self.bytes)}B" if self.bytes else ""
        return (f"{self.name}: {self.done} tasks ({self.resumed} resumed), docs {human(self.docs)}, "
                f"tokens {human(self.tokens)}{size}{rate} (since submission)")


def build_mix_ray(
    spec_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    address: str | None = None,
    *,
    threads_per_task: int = 1,
    band_partitions: int | None = None,
    num_cpus: int | None = None,
    max_retries: int = 3,
    force: bool = False,
    progress: bool = True,
    stream=None,
    in_flight_docs: int | None = None,
    in_flight_mb: int | None = None,
    _chaos: dict | None = None,
) -> dict:
    """Build (or resume) the mix a spec describes, its stages spread over a Ray cluster.

    `address`: the cluster to join (`ray.init(address=...)`, e.g. "auto" or "ray://head:10001");
    None starts a local Ray instance (`num_cpus` workers, default all cores) and shuts it down
    at the end. A Ray already initialised in this process is used as is. Each task runs the
    Rust stage on `threads_per_task` threads and asks Ray for as many CPUs. The LSH band tables
    of a near-deduplicated corpus are split into `band_partitions` tasks (default: one per band;
    the result does not depend on it). A task whose worker
    dies is retried up to `max_retries` times. `force`: replace a complete mix of another spec
    found in `out`. `in_flight_docs` / `in_flight_mb`: each task's caps, as in `build_mix`.
    Returns the build summary (as `build_mix`, plus per-stage counts under "stages").
    """
    spec = load_spec(spec_path)
    run = (address, threads_per_task, band_partitions, num_cpus, max_retries, progress, stream, _chaos)
    if storage.is_url(str(out) if out is not None else None):
        return _build_to_bucket(spec, spec_path, str(out), force, in_flight_docs, in_flight_mb, run)
    config = spec.build_config(out, threads_per_task)
    config["force"] = bool(force)
    set_in_flight(config, in_flight_docs, in_flight_mb)
    ray = _import_ray()
    out_dir = Path(config["out"])
    refuse_foreign_out(out_dir)
    with exclusive_dir_lock(out_dir, "mix build"), naming_the_key(spec, spec_path):
        summary = _build_locked(ray, spec_path, config, out_dir, *run)
    summary["out"] = str(out_dir)
    return summary


def _build_to_bucket(spec, spec_path, url: str, force: bool, in_flight_docs, in_flight_mb, run) -> dict:
    """`--ray --out s3://...`: no shared filesystem (see `ray_bucket`). The driver holds a local
    lock on its state dir and the prefix's lease for the whole build; the tasks work in their own
    temp dirs; `finish` runs in a local temp dir, then the mix is published (mix.json last) and the
    bucket's staging removed."""
    from tinyllama.data import remote_mix

    ray = _import_ray()
    b, key = storage.bucket(url)
    state = remote_mix.work_dir(url) / "ray"  # the lease token (a rerun takes its lease back), build.log
    state.mkdir(parents=True, exist_ok=True)
    with exclusive_dir_lock(state, "mix build --ray"), \
            storage.Lease(b, key, state / ".lease-token", "mix build --ray"), naming_the_key(spec, spec_path):
        local = Path(tempfile.mkdtemp(prefix="tinyllama-ray-finish-"))
        try:
            threads_per_task = run[1]
            config = spec.build_config(local / "mix", threads_per_task)
            config["force"] = bool(force)
            set_in_flight(config, in_flight_docs, in_flight_mb)
            identity = _core.BuildPlan(json.dumps(config, sort_keys=True)).identity
            lock_key = storage.join(key, "mix.json")
            if b.head(lock_key) is not None:
                theirs = json.loads(b.get(lock_key))
                if theirs.get("identity") == identity:
                    ray_bucket.drop_staging(b, key)  # a kill between mix.json and the clean-up leaves it
                    return {"up_to_date": True, "rebuilt": None, "files_resumed": 0, "files_processed": 0,
                            "docs_kept": 0, "tokens": 0, "seconds": 0.0, "stages": {}, "out": url}
                if not force:
                    raise SpecError(f"{b.url(key)}: holds a mix of another spec ({theirs.get('name')!r}); pass "
                                    f"--force to replace it (nothing was written)")
            config[ray_bucket.BUCKET_KEY] = url
            summary = _build_locked(ray, spec_path, config, local / "mix", *run, bucket=(b, key), log_dir=state)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    summary["out"] = url
    return summary


def _build_locked(ray, spec_path, config, out_dir, address, threads_per_task, band_partitions, num_cpus,
                  max_retries, progress, stream, _chaos, bucket=None, log_dir=None) -> dict:
    """The build with `out_dir` locked. `bucket`: (bucket, key) of a build into a bucket, whose
    staging lives there (`ray_bucket`); `out_dir` is then the driver's local dir for `finish`."""
    config_json = json.dumps(config, sort_keys=True)
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    started = time.time()

    driver_plan = _core.BuildPlan(json.dumps({k: v for k, v in config.items() if k != ray_bucket.BUCKET_KEY}))
    up_to_date, rebuilt = driver_plan.prepare_report()
    if up_to_date:
        return {"up_to_date": True, "rebuilt": None, "files_resumed": 0, "files_processed": 0, "docs_kept": 0,
                "tokens": 0, "seconds": time.time() - started, "stages": {}}
    if bucket:
        ray_bucket.upload_identity(*bucket, out_dir / ray_bucket.STAGING, config["tokenizer"])
    if rebuilt and progress:
        stream.write(f"{out_dir}: rebuilding: {rebuilt}\n")
        stream.flush()
    corpora = driver_plan.corpora()

    own_ray = not ray.is_initialized()
    if own_ray:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
    try:
        report = reporter(stream, tty, every=5.0) if progress else None  # rates from here, not Ray's start
        ranges = [driver_plan.band_ranges(c, band_partitions or 1 << 30) for c in range(len(corpora))]
        stages = _run_tasks(ray, config_json, corpora, ranges, threads_per_task, max_retries, _chaos, report, tty,
                            stream)
        if progress:
            stream.write("finish: moving shards into place, writing manifests, the schedule and mix.json\n")
            stream.flush()
        if bucket:
            finished = ray_bucket.finish_and_publish(*bucket, driver_plan, out_dir, bool(config.get("force")))
        else:
            finished = driver_plan.finish()
        cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    finally:
        if own_ray:
            ray.shutdown()
    seconds = time.time() - started
    tok = stages["tokenize"]
    summary = {
        "up_to_date": False,
        "rebuilt": rebuilt,
        "files_resumed": tok.resumed,
        "files_processed": tok.done - tok.resumed,
        "docs_kept": finished["docs_kept"],
        "tokens": finished["tokens"],
        "seconds": seconds,
        "stages": {name: {"files": s.done, "resumed": s.resumed, "docs": s.docs, "tokens": s.tokens,
                          "bytes": s.bytes, "duplicates": s.removed, "pairs": s.pairs}
                   for name, s in stages.items()},
    }
    if progress:
        for s in stages.values():
            if s.total:
                stream.write(s.line() + "\n")
        stream.flush()
    with open(Path(log_dir or out_dir) / "build.log", "a", encoding="utf-8") as log:
        log.write(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "host": socket.gethostname(),
            "spec": str(Path(spec_path).absolute()),
            "out": bucket[0].url(bucket[1]) if bucket else str(out_dir),
            "ray": address or "local",
            "ray_cpus": cluster_cpus,
            "threads_per_task": threads_per_task,
            **summary,
        }) + "\n")
    return summary


def _run_tasks(ray, config_json, corpora, ranges, threads, max_retries, chaos, report, tty, stream) -> dict:
    """Submit the whole task graph at once (Ray runs a task when its inputs are ready, so one
    corpus's tokenizing overlaps another's fingerprinting) and collect results as they come."""
    opts = {"num_cpus": threads, "max_retries": max_retries}
    fingerprint = ray.remote(**opts)(_fingerprint_task)
    exact = ray.remote(**opts)(_exact_task)
    bands = ray.remote(**opts)(_bands_task)
    dedup = ray.remote(**opts)(_dedup_task)
    tokenize = ray.remote(**opts)(_tokenize_task)
    layout = ray.remote(**opts)(_layout_task)
    pack = ray.remote(**opts)(_pack_task)
    cfg = ray.put(config_json)
    names = ("fingerprint", "exact", "bands", "dedup", "tokenize", "layout", "pack")
    stages = {name: _Stage(name) for name in names}
    pending: dict[Any, tuple[str, int]] = {}

    def submit(stage: str, corpus: int, ref):
        pending[ref] = (stage, corpus)
        stages[stage].total += 1
        return ref

    for c, (_name, n_files, deduped) in enumerate(corpora):
        gate = None
        if deduped:
            fps = [submit("fingerprint", c, fingerprint.remote(cfg, c, i, chaos)) for i in range(n_files)]
            groups = submit("exact", c, exact.remote(cfg, c, chaos, *fps))
            parts = [submit("bands", c, bands.remote(cfg, c, p, r, chaos, groups)) for p, r in enumerate(ranges[c])]
            gate = submit("dedup", c, dedup.remote(cfg, c, max(len(parts), 1), chaos, groups, *parts))
        toks = [submit("tokenize", c, tokenize.remote(cfg, c, i, chaos, gate)) for i in range(n_files)]
        submit("layout", c, layout.remote(cfg, c, chaos, *toks))

    waiting = list(pending)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
        for ref in ready:
            stage, c = pending[ref]
            try:
                result = ray.get(ref)
            except Exception as e:
                for r in waiting:
                    ray.cancel(r)
                # Let the cancelled tasks stop before the driver returns: what is committed when
                # the build fails is then what a rerun finds (no task commits behind its back).
                ray.wait(waiting, num_returns=len(waiting), timeout=120)
                raise _task_error(ray, e, stage) from None
            if stage == "layout":
                # The shards are known once the corpus's parts are: one pack task each.
                stages[stage].add({"resumed": False})
                waiting += [submit("pack", c, pack.remote(cfg, c, k, shard, chaos)) for k, shard in enumerate(result)]
            else:
                stages[stage].add(result)
        if report:
            parts = [f"{s.name} {s.done}/{s.total}" for s in stages.values() if s.total]
            tok = stages["tokenize"]
            docs = tok.docs or stages["fingerprint"].docs
            report("ray " + ", ".join(parts), tok.done, tok.total, docs, tok.tokens,
                   tok.bytes + stages["fingerprint"].bytes)
    if report and tty:
        stream.write("\n")
    return stages


def _task_error(ray, e: Exception, stage: str) -> Exception:
    """The task's own error (an InputError naming the file and line...) rather than Ray's
    wrapper; a worker that kept dying names the stage and says that a rerun resumes."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(e, ray.exceptions.WorkerCrashedError):
        return cause
    return TinyllamaError(f"ray {stage} task failed ({type(e).__name__}: {e}); committed work is kept, "
                          "rerun the build to resume")
