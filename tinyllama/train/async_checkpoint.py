"""Asynchronous checkpoints (`run.async_checkpoint = true`): the step loop waits only while the
state is copied to host memory; the write and the commit run on a writer thread while training
goes on.

A save has DCP's two asynchronous parts: the model's and optimizer's state dicts are staged by
DCP's `DefaultStager` (a copy into host buffers that are allocated once and reused, page-locked
on CUDA), with this rank's RNG state of the step; then `checkpoint.save` runs on the writer
thread with that copy: `dcp.save` of the staged state, the RNG and `trainer.json`, the
checksums, the rename, `latest` and keep-last, exactly as a synchronous save (the commit
protocol is the same code). Its collectives (DCP's plan exchange, the barriers, the checksum
gather) go over a gloo process group of their own, so they never interleave with the training
collectives of the main thread (DCP's async save needs a CPU backend).

The host buffers are allocated (and their pages touched, which costs more than the copy itself)
once, on the writer thread, as soon as the optimizer has state (`poll` after the first step): so
even the first save only copies. At most one save is in flight: the next one first waits for it
(its buffers are reused). The
loop learns of a commit by `poll` (each step, no collective) and says "saved PATH" then; a guard
rewind, SIGTERM / SIGUSR1 and the end of the run `wait` for it; a run that ends with an error
still lets it finish (`in_flight_saves`), before the out dir's lock is released. A kill in the
middle leaves `step-N.tmp/`, removed at the next start: the previous checkpoint stays the
newest good one. The host copy costs the state's size again in memory (≈13 GB for the 1.1B
model with AdamW), kept for the run.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist

# the writers of the runs in this process, so that `in_flight_saves` can wait for them
_LIVE: weakref.WeakSet[AsyncWriter] = weakref.WeakSet()


class AsyncWriter:
    """The asynchronous saves of one `Checkpointer` (which calls `start`, `poll`, `wait`)."""

    def __init__(self, ckpts):
        self.ckpts = ckpts
        self.pending: Future | None = None
        self.stager = None
        self.pool: ThreadPoolExecutor | None = None
        self.group = None
        self.warming: Future | None = None  # the buffers being allocated ahead of the first save
        _LIVE.add(self)

    def _open(self) -> None:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        cuda = self.ckpts.d.device.type == "cuda"
        # synchronous staging (the copy is complete when `stage` returns), page-locked on CUDA
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                   use_async_staging=False, use_non_blocking_copy=False))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyllama-checkpoint")
        if self.ckpts.d.world > 1 and dist.is_available() and dist.is_initialized():
            self.group = dist.new_group(backend="gloo")  # collective: every rank opens it at its first save

    def _barrier(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)

    def _gather(self, obj) -> list:
        if self.group is None:
            return [obj]
        out = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def start(self, step: int, model, opt, trainer_state: dict) -> None:
        """Copy the state of step `step` to host memory and start writing it; returns then."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from tinyllama.train.checkpoint import _rng_state, save

        self.wait()
        if self.stager is None:
            self._open()
        if self.warming is not None:
            self.warming.result()
            self.warming = None
        model_sd, optim_sd = get_state_dict(model, opt)
        with torch.no_grad():
            staged = self.stager.stage({"model": model_sd, "optim": optim_sd})
        staged["rng"] = _rng_state()
        c, d = self.ckpts, self.ckpts.d
        self.pending = self.pool.submit(
            save, c.dir, step, None, None, trainer_state, rank=d.rank, world=d.world,
            keep_last=c.cfg.run.keep_last, barrier=self._barrier, gather=self._gather, state=staged,
            process_group=self.group, node=c.node)

    def warm(self, model, opt) -> None:
        """Once the optimizer has state: allocate the host buffers on the writer thread (a first
        staging, whose bytes the first save overwrites), off the step loop."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if self.stager is not None or opt is None or not opt.state:
            return
        self._open()
        model_sd, optim_sd = get_state_dict(model, opt)
        self.warming = self.pool.submit(self.stager.stage, {"model": model_sd, "optim": optim_sd})

    def poll(self) -> None:
        """Report the in-flight save if its commit is done (raising its error if it failed)."""
        if self.pending is not None and self.pending.done():
            self._finish()

    def wait(self) -> None:
        """Block until no save is in flight; report the one that was."""
        if self.pending is not None:
            self._finish()

    def _finish(self) -> None:
        future, self.pending = self.pending, None
        path: Path = future.result()  # a failed write raises its StorageError (one line) here
        self.ckpts.committed(path)  # says "saved PATH" (and hands it to run.upload_to)

    def close(self, *, failing: bool = False) -> None:
        """Wait for the save in flight and free the host copy. `failing` (the run is ending with
        an error): the save still completes, but its own error does not replace the run's."""
        try:
            if self.warming is not None:
                with contextlib.suppress(Exception):
                    self.warming.result()
                self.warming = None
            if failing and self.pending is not None:
                with contextlib.suppress(Exception):
                    self.pending.result()
                self.pending = None
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None
            if self.stager is not None:
                self.stager.close()
                self.stager = None
            _LIVE.discard(self)


@contextlib.contextmanager
def in_flight_saves() -> Iterator[None]:
    """Around a run: on leaving it, wait for every asynchronous save still being written (before
    the out dir's lock and the process group go) and free the host copies."""
    try:
        yield
    except BaseException:
        for w in list(_LIVE):
            w.close(failing=True)
        raise
    for w in list(_LIVE):
        w.close()
