"""Training checkpoints: torch distributed checkpoint (DCP), committed atomically.

    out/checkpoints/
      step-1000/            a committed checkpoint
        .metadata, __*.distcp   model + optimizer state (DCP: resharded on load, so a run may
                                resume on a different world size)
        trainer.json        step, tokens, lr-schedule position, world size, the train config,
                            the mix's identity
        rng/rank-R.pt       each rank's RNG states
        checksums.json      size and BLAKE2b of every file above but trainer.json (written last)
      step-2000.tmp/        a save in progress (ignored and removed on the next start)
      latest                "step-2000": the newest committed checkpoint

When the nodes of a multi-node run do not share `out` (train/out_dir.py), each node's
`checkpoints/step-N/` holds that node's part: its ranks' DCP shards and RNG states (rank 0's node
also `.metadata` and trainer.json) and the whole checkpoint's checksums.json; no node holds a
whole checkpoint, so `latest` is written on rank 0's node only, and the checkpoint is committed
whole in `run.upload_to` (train/remote.py), from which `--resume` fetches it onto every node.

A save first checks, over all ranks, that every weight is finite (a diverged model is never
committed), then writes everything into `step-N.tmp/`; after a barrier (all ranks done) the
ranks checksum the files between them (file i by rank i mod world, each rank on a few
threads: BLAKE2b runs at well under 1 GB/s a core, and a 1.1B checkpoint with its optimizer
is ≈13 GB), rank 0 records the checksums, renames the dir to `step-N/` and then replaces
`latest` via a temp file + rename. A kill at any
instant leaves the previous `latest` pointing at a complete checkpoint. Keep-last prunes only
checkpoints older than the one just committed, so the newest good checkpoint always survives.

Loading verifies the checksums first: `resume_candidates` lists committed checkpoints newest
first with the reason each damaged one is skipped, so `--resume` falls back to the newest one
that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from tinyllama import fault
from tinyllama.errors import CheckpointError, StorageError
from tinyllama.model import Llama, ModelConfig, build_model

_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"
_HASH_CHUNK = 8 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some filesystems cannot fsync a dir)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def committed_steps(ckpt_dir: Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(
        int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The newest committed checkpoint (per `latest`, else the highest step-N dir)."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / "latest"
    if marker.is_file():
        p = ckpt_dir / marker.read_text(encoding="utf-8").strip()
        if (p / "trainer.json").is_file():
            return p
    steps = [s for s in committed_steps(ckpt_dir) if (ckpt_dir / f"step-{s}" / "trainer.json").is_file()]
    return ckpt_dir / f"step-{steps[-1]}" if steps else None


def clean_partial(ckpt_dir: Path) -> None:
    """Remove saves that were interrupted (rank 0, at start-up)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet():
    """DCP warns when used without a process group; that is intended here (one process)."""
    with warnings.catch_warnings():
        if not (dist.is_available() and dist.is_initialized()):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save(
    ckpt_dir: str | os.PathLike[str],
    step: int,
    model,
    optimizer,
    trainer_state: dict,
    *,
    rank: int,
    world: int,
    keep_last: int,
    barrier,
    gather=None,
    commit_point: str | None = None,
    state: dict | None = None,
    process_group=None,
    node: tuple[int, int] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed directory.

    `gather(obj)` returns every rank's `obj` in rank order (default: this rank's alone); it
    reduces the finite-weights verdict and collects the checksums. `commit_point`: a fault
    point (tinyllama/fault.py) reached on rank 0 right before the commit, after `save-checksums`.
    `state`: {"model", "optim", "rng"} as an asynchronous save copied them at the step
    (train/async_checkpoint.py, which runs this on a writer thread with `process_group` for DCP and
    its own `barrier` / `gather`); None: the model's, optimizer's and RNG's state now.
    `node`: (local rank, local world) when each node has an out dir of its own (`Dist.out_shared`
    false): each node's local rank 0 keeps its node's part (see the module doc); None: every rank
    sees `ckpt_dir`, kept by rank 0.
    Refuses (`CheckpointError`, nothing committed) when a weight is not finite on any rank. A failed write
    (no space, no permission) is a `StorageError` naming the path and the intact previous
    checkpoint, and leaves no partial save behind."""
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f"step-{step}.tmp"
    gather = gather or (lambda obj: [obj])
    keeper = rank == 0 if node is None else node[0] == 0  # who keeps the ckpt_dir this rank sees
    share = (rank, world) if node is None else node  # this rank's share of the files it sees
    if not all(gather(weights_finite(model if state is None else state["model"]))):
        raise CheckpointError(
            f"step {step}: the model has non-finite weights; not saved (the last good checkpoint "
            f"is {_name(latest_checkpoint(ckpt_dir))})"
        )
    try:
        if keeper:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            (tmp / "rng").mkdir()
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer) if state is None else (state["model"], state["optim"])
        with _quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), process_group=process_group)
        torch.save(_rng_state() if state is None else state["rng"], tmp / "rng" / f"rank-{rank}.pt")
        if rank == 0:
            _write_atomic(
                tmp / "trainer.json", json.dumps({**trainer_state, "step": step, "world": world}, indent=1)
            )
        barrier()  # every rank's shards are on disk
        if rank == 0:
            fault.reached("save-files")
        shares = gather(_checksum_share(tmp, *share))
        if keeper:
            sums = {rel: digest for part in shares for rel, digest in part.items()}
            _write_atomic(tmp / CHECKSUMS, json.dumps(sums, indent=1, sort_keys=True))
        if rank == 0:
            fault.reached("save-checksums")
            if commit_point:
                fault.reached(commit_point)
    except (OSError, RuntimeError, CheckpointException) as e:
        # torch reports a full disk as "enforce fail at inline_container.cc", wrapped by DCP.
        if keeper:
            shutil.rmtree(tmp, ignore_errors=True)  # our own partial save
        why = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed; is the disk full?"
        raise StorageError(
            f"{tmp}: cannot write checkpoint step-{step} ({why}); nothing was committed, the last "
            f"good checkpoint is {_name(latest_checkpoint(ckpt_dir))}"
        ) from None
    if keeper:
        if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
    if rank == 0:
        fault.reached("save-commit")
        _write_atomic(ckpt_dir / "latest", final.name + "\n")
        fault.reached("latest")
    if keeper:
        # Only checkpoints older than this one are pruned: after a fall-back resume, a newer
        # (damaged) checkpoint must not count against keep_last and push this one out.
        older = [s for s in committed_steps(ckpt_dir) if s < step]
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(ckpt_dir / f"step-{old}", ignore_errors=True)
    barrier()
    return final


def weights_finite(model) -> bool:
    """True when every parameter (this rank's shards of it) is finite; `model` may also be a
    model state dict (an asynchronous save's copy)."""
    with torch.no_grad():
        for p in (model.values() if isinstance(model, dict) else model.parameters()):
            t = p.to_local() if hasattr(p, "to_local") else p
            if t.numel() and not bool(torch.isfinite(t).all()):
                return False
    return True


def _name(path: Path | None) -> str:
    return path.name if path is not None else "none"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return text[-1] if text else type(e).__name__


def _checksum_share(root: Path, rank: int, world: int) -> dict[str, dict]:
    """This rank's share of a save's checksums: file i (in sorted order) is rank i mod
    world's; each file is fsync'ed and digested, a few at a time (hashlib releases the GIL).
    `trainer.json` is fsync'ed but not summed (see `verify`)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())[rank::world]

    def digest(p: Path) -> dict | None:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        return None if p.name == "trainer.json" else _file_digest(p)

    with ThreadPoolExecutor(_hash_threads(len(files))) as pool:
        digests = list(pool.map(digest, files))
    return {p.relative_to(root).as_posix(): d for p, d in zip(files, digests) if d is not None}


def _hash_threads(files: int) -> int:
    return max(1, min(files, 4, os.cpu_count() or 1))


def _file_digest(path: Path) -> dict:
    h = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "blake2b": h.hexdigest()}


def verify(path: str | os.PathLike[str]) -> str | None:
    """None when checkpoint `path` is intact, else why not (one line). A checkpoint written
    before checksums existed only has its files' presence checked. `trainer.json` is not
    summed: it is small JSON that is parsed and checked on use, and users legitimately edit it
    (e.g. the mix path after moving a mix)."""
    path = Path(path)
    if not (path / "trainer.json").is_file():
        return "no trainer.json"
    try:
        json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"trainer.json unreadable ({e})"
    if not (path / ".metadata").is_file():
        return "no .metadata (DCP index)"
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        return None
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} unreadable ({e})"
    for rel, want in sorted(sums.items()):
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["size"]:
            return f"{rel} has {f.stat().st_size} bytes, {want['size']} were written"
    # Sizes first (cheap), then the digests, a few files at a time.
    names = sorted(sums)
    with ThreadPoolExecutor(_hash_threads(len(names))) as pool:
        digests = list(pool.map(lambda rel: _file_digest(path / rel), names))
    for rel, got in zip(names, digests):
        if got != sums[rel]:
            return f"{rel} does not match its checksum (damaged)"
    return None


def resume_candidates(ckpt_dir: str | os.PathLike[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Committed checkpoints newest first, split into (intact, [(damaged, why)])."""
    ckpt_dir = Path(ckpt_dir)
    good, bad = [], []
    for s in reversed(committed_steps(ckpt_dir)):
        p = ckpt_dir / f"step-{s}"
        why = verify(p)
        if why is None:
            good.append(p)
        else:
            bad.append((p, why))
    return good, bad


def load(path: str | os.PathLike[str], model, optimizer, *, rank: int) -> dict:
    """Collective: restore model + optimizer (resharded to this world) and this rank's RNG.
    Returns the trainer state (step, tokens, ...). A checkpoint DCP cannot read is a
    `CheckpointError` naming it."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with _quiet():
            dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # noqa: BLE001  (DCP raises many kinds on a damaged dir: name it)
        raise CheckpointError(f"{path}: unreadable checkpoint ({_short(e)})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    try:
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: trainer.json unreadable ({_short(e)})") from None
    rng = path / "rng" / f"rank-{rank}.pt"
    if rng.is_file() and trainer.get("world") is not None:
        _set_rng_state(torch.load(rng, weights_only=False))
    return trainer


class Checkpointer:
    """The run's checkpoints: when to save, saving, and what `--resume` may continue from.

    `restore` picks the newest committed checkpoint that verifies (checksums, then finite
    weights after loading), skipping damaged ones with a note; it refuses, with one line, a
    checkpoint of another model shape or document masking, or of another mix unless
    `allow_mix_change`."""

    def __init__(self, ckpt_dir: Path, cfg, d):
        self.dir, self.cfg, self.d = Path(ckpt_dir), cfg, d
        self.notes: list[str] = []  # what restore skipped or decided, for the run's log
        self.saved = -1
        self.trainer: dict | None = None  # trainer.json of the checkpoint restored last
        self.say = lambda text: None  # where "saved PATH" goes once a save is committed (the run's log)
        self.writer = None  # run.async_checkpoint: the writer thread's saves (train/async_checkpoint.py)
        if getattr(cfg.run, "async_checkpoint", False):
            from tinyllama.train.async_checkpoint import AsyncWriter

            self.writer = AsyncWriter(self)
        if not d.out_shared and not getattr(cfg.run, "upload_to", ""):
            raise CheckpointError(
                f"{cfg.out}: the nodes of this run do not share this out dir (each has its own), so no node can hold "
                f"a whole checkpoint: set run.upload_to = \"s3://BUCKET/runs/NAME\" to commit them in a bucket, or "
                f"give every node the same shared out dir")
        # `save`'s `node`: out not shared, each node keeps its ranks' part of a save in its own dir
        # (only run.upload_to ever holds the whole checkpoint); None: one dir holds it all.
        self.node = None if d.out_shared else (d.local_rank, d.local_world)
        self.uploader = None  # run.upload_to: the out dir's keeper uploads each committed save (train/remote.py)
        if getattr(cfg.run, "upload_to", "") and d.leads_out:
            from tinyllama.train.remote import Uploader

            others = [] if d.out_shared else list(range(d.local_world, d.world, d.local_world))
            self.uploader = Uploader(cfg.run.upload_to, cfg.run.keep_last, lambda text: self.say(text),
                                     rank=d.rank, others=others if d.is_main else [])

    def committed(self, path: Path) -> None:
        """A save is committed (synchronous, or its asynchronous write done): say so, and upload
        it to run.upload_to in the background."""
        self.say(f"saved {path}")
        if self.uploader is not None:
            self.uploader.submit(path)

    def claim_bucket(self, resume: bool) -> None:
        """Collective: with run.upload_to, rank 0 takes the prefix for this run (a fresh run on a
        prefix holding checkpoints, or a prefix another live run holds, is refused; train/remote.py)
        before anything is written there; every rank learns the outcome."""
        from tinyllama.train.parallel import all_gather_objects

        if not getattr(self.cfg.run, "upload_to", ""):
            return
        why = None
        if self.uploader is not None and self.d.is_main:
            try:
                self.uploader.claim(self.dir.parent, resume)
            except (StorageError, CheckpointError) as e:
                why = str(e)
        why = all_gather_objects(why)[0]
        if why is not None:
            raise CheckpointError(why)

    def close(self) -> None:
        """The run's end: no save or upload in flight, the bucket's lease released."""
        self.wait()
        if self.uploader is not None:
            self.uploader.close()

    def release_lease(self) -> None:
        """A failed run: the bucket's lease released, without waiting for what is in flight."""
        if self.uploader is not None and self.uploader.lease is not None:
            try:
                self.uploader.lease.release()
            except StorageError:
                pass  # it expires on its own once no longer renewed

    def latest_name(self) -> str:
        return _name(latest_checkpoint(self.dir))

    def refuse_existing(self) -> None:
        """Collective: a new run refuses an out dir (any node's, when they are not shared) that holds
        checkpoints."""
        from tinyllama.train.parallel import all_gather_objects

        why = None
        if self.d.out_shared:
            last = latest_checkpoint(self.dir)
        else:  # a node's part has no trainer.json (only rank 0's has): any step dir counts there
            last = self.dir / f"step-{steps[-1]}" if (steps := committed_steps(self.dir)) else None
        if self.d.leads_out and last is not None:
            # Starting over would interleave new checkpoints with the old ones (and keep_last
            # would prune by step number): refuse rather than lose a run.
            where = self.dir if self.d.out_shared else f"{self.dir} (on the node of rank {self.d.rank})"
            why = (f"{where} already holds checkpoints (latest: {last.name}): pass --resume to continue "
                   f"that run, or choose another out dir")
        whys = [w for w in all_gather_objects(why) if w]
        if whys:
            raise CheckpointError(whys[0])

    def clean_partial(self) -> None:
        """Saves a kill interrupted are removed (by each out dir's keeper, at start-up)."""
        if self.d.leads_out:
            clean_partial(self.dir)

    def due(self, step: int, end: int, stopping: bool) -> bool:
        every = self.cfg.run.save_every
        return step != self.saved and ((every and step % every == 0) or step == end or stopping)

    def save(self, step: int, model, opt, state: dict) -> Path | None:
        """Collective: the committed dir. With `run.async_checkpoint`: None once the state is
        copied; the commit is said when its write completes (`poll`, `wait`)."""
        from tinyllama.train.parallel import all_gather_objects

        d = self.d
        self.saved = step
        if self.uploader is not None:  # keep-last must not prune a checkpoint still being uploaded
            self.uploader.wait()
        if self.writer is not None:
            self.writer.start(step, model, opt, state)
            return None
        path = save(self.dir, step, model, opt, state, rank=d.rank, world=d.world,
                    keep_last=self.cfg.run.keep_last, barrier=d.barrier, gather=all_gather_objects, node=self.node)
        self.committed(path)
        return path

    def poll(self, model=None, opt=None) -> None:
        """Say so if the asynchronous save in flight has committed (no collective); given the
        model and optimizer, the host buffers of the saves to come are allocated in the background
        once the optimizer has state."""
        if self.writer is not None:
            self.writer.poll()
            if model is not None:
                self.writer.warm(model, opt)

    def wait(self) -> None:
        """Until no asynchronous save is in flight (the run's end, a stop signal, a rewind)."""
        if self.writer is not None:
            self.writer.wait()
        if self.uploader is not None:
            self.uploader.wait()

    def fetch_from_bucket(self) -> None:
        """Collective: with run.upload_to and no whole local checkpoint, rank 0 fetches the newest
        bucket checkpoint that verifies (train/remote.py); when the nodes do not share out (their
        dirs hold parts, never a whole checkpoint), every node's keeper then fetches that one. Every
        rank learns the outcome."""
        from tinyllama.train.parallel import all_gather_objects
        from tinyllama.train.remote import fetch, restore_into

        url = getattr(self.cfg.run, "upload_to", "")
        if not url or (self.d.out_shared and latest_checkpoint(self.dir) is not None):
            return
        got = None
        if self.d.is_main:
            try:
                got = ("ok", restore_into(url, self.dir))
            except (StorageError, CheckpointError) as e:
                got = ("error", str(e))
        kind, step_url = all_gather_objects(got)[0]
        if kind == "error":
            raise CheckpointError(step_url)
        if step_url is None:
            return
        why = None
        if self.d.leads_out and not self.d.is_main:
            try:
                fetch(step_url, self.dir)
            except (StorageError, CheckpointError) as e:
                why = f"the node of rank {self.d.rank}: {e}"
            except OSError as e:
                why = (f"the node of rank {self.d.rank}: {self.dir}: cannot write the fetched checkpoint: "
                       f"{e.strerror or e}")
        whys = [w for w in all_gather_objects(why) if w]
        if whys:
            raise CheckpointError(whys[0])
        whose = "no local checkpoint" if self.d.out_shared else "the nodes' out dirs hold parts"
        self.notes.append(f"--resume: {whose}; fetched {step_url.rsplit('/', 1)[-1]} from {step_url.rsplit('/', 1)[0]}")

    def restore(self, model, opt, mix: dict | None, allow_mix_change: bool) -> tuple[int, int]:
        """(step, tokens) of the checkpoint loaded into `model` and `opt`; (0, 0) when there
        is none. Collective."""
        from tinyllama.train.parallel import all_gather_objects

        d = self.d
        # Rank 0 reads every file once to check the sums; the verdict is shared.
        good, bad = all_gather_objects(resume_candidates(self.dir) if d.is_main else None)[0]
        self.notes += [f"--resume: skipped {p.name}: {why}" for p, why in bad]
        for path in good:
            # rank 0's copy (verified): another node's dir may hold a part only (out not shared)
            trainer = all_gather_objects(json.loads((path / "trainer.json").read_text(encoding="utf-8"))
                                         if d.is_main else None)[0]
            check_compatible(path, trainer, self.cfg, mix, allow_mix_change)
            try:
                state = load(path, model, opt, rank=d.rank)
                why = None if weights_finite(model) else "non-finite weights"
            except CheckpointError as e:
                state, why = None, str(e)
            whys = [w for w in all_gather_objects(why) if w]
            if not whys:
                self.saved, self.trainer = int(state["step"]), state
                self.notes.append(f"resumed from {path}")
                return int(state["step"]), int(state["tokens"])
            self.notes.append(f"--resume: skipped {path.name}: {whys[0]}")
        if good or bad:
            raise CheckpointError(
                f"{self.dir}: no checkpoint can be resumed: "
                + "; ".join(n.removeprefix("--resume: skipped ") for n in self.notes)
            )
        self.notes.append(f"--resume: no checkpoint in {self.dir}, starting fresh")
        self.trainer = None
        return 0, 0

    def load_origin(self, path: Path, model, opt, mix: dict | None, allow_mix_change: bool) -> tuple[int, int]:
        """Collective: (step, tokens) of another run's checkpoint `path` (an annealing
        branch's parent), loaded into `model` and `opt` after the same checks as a resume."""
        from tinyllama.train.parallel import all_gather_objects

        why = all_gather_objects(verify(path) if self.d.is_main else None)[0]
        if why is not None:
            raise CheckpointError(f"{path}: {why}")
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        check_compatible(path, trainer, self.cfg, mix, allow_mix_change)
        state = load(path, model, opt, rank=self.d.rank)
        if not all(all_gather_objects(weights_finite(model))):
            raise CheckpointError(f"{path}: non-finite weights")
        self.trainer = state
        return int(state["step"]), int(state["tokens"])

    def rewind(self, model, opt, mix: dict | None, origin: Path | None, seed: int) -> tuple[int, int]:
        """Collective (the guard): back to the newest committed checkpoint of this run; none
        yet: to `origin` (an annealing branch's parent), else to the initial weights and an
        empty optimizer state. (step, tokens) of where it went."""
        self.wait()  # a save in flight is of a good step before this one: the newest to go back to
        notes = len(self.notes)
        step, tokens = self.restore(model, opt, mix, allow_mix_change=True)
        del self.notes[notes:]
        if self.trainer is not None:
            return step, tokens
        if origin is not None:
            return self.load_origin(origin, model, opt, mix, allow_mix_change=True)
        model.init_weights(seed)
        opt.state.clear()
        return 0, 0


def mix_identity(lock: dict) -> dict:
    """What a checkpoint records of the mix it was trained on (from the mix's `mix.json`)."""
    return {k: lock.get(k) for k in ("identity", "name", "seed", "seq_len", "tokenizer_sha256")}


def check_compatible(path: Path, trainer: dict, cfg, mix: dict | None, allow_mix_change: bool) -> None:
    """Refuse to resume a checkpoint onto another model shape, another `run.document_masking`,
    or (unless allowed) another mix."""
    import dataclasses

    have = (trainer.get("config") or {}).get("model") or {}
    want = dataclasses.asdict(cfg.model)
    diff = [f"{k}: checkpoint {have.get(k)} vs config {want[k]}" for k in want if k in have and have[k] != want[k]]
    if diff:
        raise CheckpointError(f"{path}: the model differs from the config ({', '.join(diff)}); resume needs the "
                              f"same model shape (use another out dir, or import-hf for a deliberate change)")
    # The trainer records the setting in trainer.json. Weights imported from Hugging Face
    # (import-hf) have no packing history: either setting may continue them. A trainer
    # checkpoint from before the setting existed was trained with TinyLlama's packing.
    was = trainer.get("document_masking")
    if was is None and not trainer.get("imported_from"):
        was = bool(((trainer.get("config") or {}).get("run") or {}).get("document_masking", False))
    if was is not None and bool(was) != cfg.run.document_masking:
        raise CheckpointError(
            f"{path}: trained with run.document_masking = {str(was).lower()}, the config has "
            f"{str(cfg.run.document_masking).lower()}; resume needs the same setting (set "
            f"run.document_masking = {str(was).lower()}, or use another out dir)"
        )
    old = trainer.get("mix")
    if old and mix and not allow_mix_change:
        diff = [f"{k}: checkpoint {old.get(k)!r} vs now {mix.get(k)!r}" for k in mix if old.get(k) != mix.get(k)]
        if diff:
            raise CheckpointError(
                f"{path}: trained on another mix ({'; '.join(diff)}): pass --allow-mix-change to continue on "
                f"{cfg.mix} deliberately"
            )


def resolve(path: Path) -> Path:
    """Accept a run dir, its checkpoints dir, or one step-N dir."""
    if (path / "trainer.json").is_file():
        return path
    for cand in (path, path / "checkpoints"):
        found = latest_checkpoint(cand)
        if found is not None:
            return found
    raise CheckpointError(f"{path}: no committed training checkpoint (step-N/ with trainer.json) found")


def model_from_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Llama:
    """The model of committed checkpoint `path` (a `step-N/` dir; see `resolve`), verified, as a
    plain (unsharded) fp32 `Llama` in eval mode. Single process, no process group needed: DCP
    reads the shards of any world size. Users call `tinyllama.load_model`, which resolves run
    dirs and also reads Hugging Face dirs."""
    ckpt = Path(path)
    why = verify(ckpt)
    if why is not None:
        raise CheckpointError(f"{ckpt}: {why}")
    trainer = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
    model = build_model(ModelConfig(**trainer["config"]["model"]), device, seed=None)
    sd = {"model": model.state_dict()}
    try:
        with _quiet():
            dcp.load(sd, checkpoint_id=str(ckpt))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{ckpt}: unreadable checkpoint ({_short(e)})") from None
    model.load_state_dict(sd["model"])
    return model.eval()


__all__ = [
    "Checkpointer", "check_compatible", "clean_partial", "committed_steps", "fsync_dir", "latest_checkpoint",
    "load", "mix_identity", "model_from_checkpoint", "resolve", "resume_candidates", "save", "verify", "weights_finite",
]
