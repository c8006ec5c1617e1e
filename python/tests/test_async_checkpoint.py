"""Asynchronous checkpoints (`run.async_checkpoint`, train/async_checkpoint.py): the state of the
step is copied and written on a thread, committed by the same protocol as a synchronous save; at
most one save in flight; a stop signal, a rewind and the end of the run wait for it; a kill in
the middle leaves the previous checkpoint as the newest good one; a failed write is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_run_health import GUARD, events, run_poisoned, steps_of
from test_train import TokenStreamSource, load_source, losses, read_metrics, run_inproc, streams, write_config

from tinyllama.errors import StorageError
from tinyllama.train import checkpoint

__all__ = ["streams"]  # the fixture, re-exported for pytest

ASYNC = ["run.async_checkpoint=true"]
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parents[1]


def committed(out: Path) -> list[str]:
    ckpts = out / "checkpoints"
    return sorted(p.name for p in ckpts.iterdir() if p.is_dir())


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.model_from_checkpoint(path).state_dict()


@pytest.fixture(scope="module")
def sync_run(streams, tmp_path_factory) -> Path:
    cfg = write_config(tmp_path_factory.mktemp("sync"))
    run_inproc(cfg, streams, ["run.save_every=4", "run.keep_last=2"])
    return cfg.parent / "run"


def test_an_async_run_commits_the_same_checkpoints_as_a_sync_run(sync_run, streams, tmp_path, capsys):
    cfg = write_config(tmp_path)
    metrics = run_inproc(cfg, streams, ASYNC + ["run.save_every=4", "run.keep_last=2"])
    out = tmp_path / "run"
    assert losses(metrics) == losses(read_metrics(sync_run))  # bit-identical training
    assert committed(out) == committed(sync_run) == ["step-12", "step-8"]  # keep-last after each commit
    assert (out / "checkpoints/latest").read_text() == "step-12\n"
    for name in ("step-8", "step-12"):
        assert checkpoint.verify(out / "checkpoints" / name) is None  # checksums of every file
        a, b = state_of(out / "checkpoints" / name), state_of(sync_run / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        mine = json.loads((out / f"checkpoints/{name}/trainer.json").read_text())
        theirs = json.loads((sync_run / f"checkpoints/{name}/trainer.json").read_text())
        for t in (mine, theirs):  # all but the setting itself and the run's own paths
            t["config"]["run"].pop("async_checkpoint")
            t["config"].pop("mix"), t["config"].pop("out"), t["config"].pop("source")
        assert mine == theirs
        for r in ("rng/rank-0.pt",):
            assert torch.equal(torch.load(out / "checkpoints" / name / r, weights_only=False)["torch"],
                               torch.load(sync_run / "checkpoints" / name / r, weights_only=False)["torch"])
    err = capsys.readouterr().err
    saved = [ln for ln in err.splitlines() if ln.startswith("saved ")]
    assert saved == [f"saved {out / 'checkpoints' / f'step-{s}'}" for s in (4, 8, 12)]


class Gate:
    """dcp.save held on its thread until `release()` (with `hold`, each write is held anew):
    what the loop does meanwhile is seen."""

    def __init__(self, monkeypatch, hold: bool = False):
        self.release_ev, self.writing = threading.Event(), threading.Event()
        self.log: list[tuple[str, object]] = []
        self.holding = False
        real = checkpoint.dcp.save

        def gated(state, *, checkpoint_id, **kw):
            step = int(Path(checkpoint_id).name.split("-")[1].split(".")[0])
            self.log.append(("write", step))
            self.holding = True
            self.writing.set()
            assert self.release_ev.wait(timeout=120), "the test never released the write"
            if hold:
                self.release_ev.clear()
            real(state, checkpoint_id=checkpoint_id, **kw)
            self.holding = False
            self.log.append(("written", step))

        monkeypatch.setattr(checkpoint.dcp, "save", gated)

    def release(self) -> None:
        self.release_ev.set()


def test_the_state_written_is_the_state_of_its_step(streams, tmp_path, monkeypatch):
    """The write is held while the model trains on: the checkpoint still holds the step's
    weights (the staged copy), not the ones the loop changed meanwhile."""
    from test_train import CONFIG

    from tinyllama.model import build_model
    from tinyllama.train.checkpoint import Checkpointer
    from tinyllama.train.config import load_config
    from tinyllama.train.parallel import Dist

    gate = Gate(monkeypatch)
    cfg = load_config(write_config(tmp_path, CONFIG), ["run.async_checkpoint=true"])
    d = Dist(0, 1, 0, 1, torch.device("cpu"), None)
    model = build_model(cfg.model, "cpu", seed=1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpts = Checkpointer(Path(cfg.out) / "checkpoints", cfg, d)
    said = []
    ckpts.say = said.append
    assert ckpts.save(3, model, opt, {"tokens": 0, "config": cfg.to_dict()}) is None  # returns once copied
    assert gate.writing.wait(timeout=120)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training goes on
    ckpts.poll()
    assert said == [] and not (Path(cfg.out) / "checkpoints/step-3").exists()  # still in flight
    gate.release()
    ckpts.wait()
    assert said == [f"saved {Path(cfg.out) / 'checkpoints/step-3'}"]
    got = state_of(Path(cfg.out) / "checkpoints/step-3")
    assert all(torch.equal(got[k], before[k]) for k in before)
    ckpts.writer.close()


def held_until_waited(monkeypatch) -> Gate:
    """Every write held until the loop waits for it (`AsyncWriter.wait`); each staging logged
    with whether a write was in flight then."""
    from torch.distributed.checkpoint.staging import DefaultStager

    from tinyllama.train.async_checkpoint import AsyncWriter

    gate = Gate(monkeypatch, hold=True)
    real_stage, real_wait = DefaultStager.stage, AsyncWriter.wait

    def stage(self, state, **kw):
        gate.log.append(("stage", gate.holding))
        return real_stage(self, state, **kw)

    def wait(self):
        if self.pending is not None:
            gate.release()
        real_wait(self)

    monkeypatch.setattr(DefaultStager, "stage", stage)
    monkeypatch.setattr(AsyncWriter, "wait", wait)
    return gate


def test_at_most_one_save_in_flight_and_the_end_waits(streams, tmp_path, monkeypatch):
    """A save every step, each write held until the loop next waits for it: no state is staged
    (into the buffers the held write reads) while a write is in flight, the writes follow one
    another, and the run returns with its last save committed. The buffers are allocated once,
    before the first save."""
    gate = held_until_waited(monkeypatch)
    run_inproc(write_config(tmp_path), streams, ASYNC + ["run.save_every=1", "run.max_steps=5", "run.keep_last=5"])
    # the first staging allocates the host buffers (on the writer thread, after step 1's update)
    assert gate.log == [("stage", False)] + [e for s in range(1, 6) for e in (("stage", False), ("write", s),
                                                                               ("written", s))]
    assert committed(tmp_path / "run") == [f"step-{s}" for s in range(1, 6)]
    assert not list((tmp_path / "run/checkpoints").glob("*.tmp"))
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-5\n"


class SignalledSource(TokenStreamSource):
    """Sends the trainer SIGTERM while it loads the batch of step `at` (as Slurm would)."""

    at = 6

    def batch(self, step: int, rank: int = 0, world: int = 1):
        if step == self.at:
            signal.raise_signal(signal.SIGTERM)
        return super().batch(step, rank, world)


def test_sigterm_waits_for_the_save_then_resume_continues(sync_run, streams, tmp_path, capsys):
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    cfg = load_config(write_config(tmp_path), ASYNC + ["run.save_every=4", "run.keep_last=2"])
    src = load_source(streams)
    train(cfg, source=SignalledSource(dict(zip(src.names, src.streams))))
    out = tmp_path / "run"
    assert committed(out) == ["step-4", "step-7"] and (out / "checkpoints/latest").read_text() == "step-7\n"
    err = capsys.readouterr().err.splitlines()
    assert err.index(f"saved {out / 'checkpoints/step-7'}") < next(
        i for i, ln in enumerate(err) if ln.startswith("stopped by SIGTERM after step 7"))
    resumed = run_inproc(write_config(tmp_path), streams, ASYNC + ["run.save_every=4", "run.keep_last=2"],
                         resume=True)
    assert losses(resumed) == losses(read_metrics(sync_run))


def test_a_kill_during_an_async_save_leaves_the_previous_checkpoint(sync_run, streams, tmp_path):
    """The process aborts on the writer thread after the second save's files are written (step
    8), before its checksums and rename: step-4 stays the newest good checkpoint, and --resume
    repeats the uninterrupted run."""
    cfg = write_config(tmp_path)
    sets = ["--set", "run.async_checkpoint=true", "--set", "run.save_every=4", "--set", "run.keep_last=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYLLAMA_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TINYLLAMA_ABORT_AFTER": "save-files:2"})
    r = subprocess.run([sys.executable, str(TESTS / "test_train.py"), str(cfg), str(streams), *sets], env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode != 0 and "aborting after save-files #2" in r.stderr, r.stderr[-2000:]
    out = tmp_path / "run"
    assert checkpoint.latest_checkpoint(out / "checkpoints").name == "step-4"
    assert (out / "checkpoints/step-8.tmp").is_dir()  # the half-done save, removed at the next start
    resumed = run_inproc(cfg, streams, ASYNC + ["run.save_every=4", "run.keep_last=2"], resume=True)
    assert losses(resumed) == losses(read_metrics(sync_run))
    assert not (out / "checkpoints/step-8.tmp").exists()


def test_a_failed_async_write_is_one_line_and_commits_nothing(streams, tmp_path, monkeypatch):
    real = checkpoint.dcp.save

    def full_disk(state, *, checkpoint_id, **kw):
        if checkpoint_id.endswith("step-8.tmp"):
            raise OSError(28, "No space left on device")
        real(state, checkpoint_id=checkpoint_id, **kw)

    monkeypatch.setattr(checkpoint.dcp, "save", full_disk)
    with pytest.raises(StorageError) as e:
        run_inproc(write_config(tmp_path), streams, ASYNC + ["run.save_every=4"])
    out = tmp_path / "run/checkpoints"
    assert str(e.value) == (f"{out / 'step-8.tmp'}: cannot write checkpoint step-8 (No space left on device); "
                            f"nothing was committed, the last good checkpoint is step-4")
    assert committed(tmp_path / "run") == ["step-4"]


def test_a_guard_rewind_waits_for_the_save_in_flight(streams, tmp_path, monkeypatch):
    """The spike at step 9 rewinds to the newest checkpoint, step 8, whose write is held until
    the rewind waits for it: the run ends as the synchronous guarded run does."""
    sync = run_poisoned(write_config(tmp_path / "sync"), streams, GUARD)
    held_until_waited(monkeypatch)
    metrics = run_poisoned(write_config(tmp_path / "async"), streams, GUARD + ASYNC)
    (rw,) = events(metrics, "rewind")
    assert rw["to"] == "step-8"
    assert losses(steps_of(metrics)) == losses(steps_of(sync))


@pytest.mark.slow
def test_two_ranks_save_asynchronously_like_one(sync_run, streams, tmp_path):
    """torchrun, 2 FSDP ranks (gloo): the writer threads' collectives go over their own group;
    the run tracks the one-process run, and its checkpoints hold exactly the weights a
    synchronous 2-rank run commits."""
    from test_train import run_torchrun

    sets = ["run.save_every=4", "run.keep_last=2"]
    two = run_torchrun(2, write_config(tmp_path / "async"), streams, ASYNC + sets)
    assert losses(two) == pytest.approx(losses(read_metrics(sync_run)), rel=1e-3)
    assert committed(tmp_path / "async/run") == ["step-12", "step-8"]
    run_torchrun(2, write_config(tmp_path / "sync"), streams, sets)
    for name in ("step-8", "step-12"):
        a = state_of(tmp_path / "async/run/checkpoints" / name)
        b = state_of(tmp_path / "sync/run/checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
