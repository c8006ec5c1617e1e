"""Training metrics: the tokens/s (and MFU) of a logged record cover exactly the steps it
reports, whatever pauses the loop leaves out (a checkpoint save, a validation). Driven with a
fake clock: no timing, no sleeps."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tinyllama.train import metrics

SEQ_LEN, N_GLOBAL = 8, 2  # 16 tokens per step
FLOPS_PER_TOKEN, PEAK = 1e9, 1e12


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=c, time=time.time))
    return c


def window() -> metrics.MetricsWindow:
    cfg = SimpleNamespace(
        run=SimpleNamespace(peak_tflops=PEAK / 1e12, document_masking=True),
        model=SimpleNamespace(flops_per_token=lambda seq_len: FLOPS_PER_TOKEN),
        micro_batch=1,
    )
    return metrics.MetricsWindow(cfg, SimpleNamespace(device=torch.device("cpu"), world=1))


def step(w: metrics.MetricsWindow, clock: Clock, seconds: float) -> None:
    """One optimizer step that takes `seconds` (loading its batch included), then `add`."""
    clock.now += seconds
    w.add({"seq_losses": torch.tensor([1.0, 3.0]), "grad_norm": torch.tensor(0.5)}, ["a", "b"], N_GLOBAL, SEQ_LEN)


def flush(w: metrics.MetricsWindow, at: int) -> dict:
    return w.flush(at, 1e-3, at * N_GLOBAL * SEQ_LEN, N_GLOBAL)


def test_a_save_between_logged_steps_is_left_out_and_the_steps_before_it_kept(clock):
    """Steps 1-4 take 1 s each; a 10 s save after step 2 (the loop then calls restart_clock).
    The record at step 4: 64 tokens in 4 s. (Restarting the clock alone gave 64 tokens over the
    2 s since the save: 32 tok/s, twice the real rate, as `step 40/74 ... 11,877 tok/s` was.)"""
    w = window()
    for s in (1, 2, 3, 4):
        step(w, clock, 1.0)
        if s == 2:
            clock.now += 10.0  # the checkpoint save
            w.restart_clock()
    rec = flush(w, 4)
    assert rec["tokens_per_s"] == pytest.approx(4 * N_GLOBAL * SEQ_LEN / 4.0)
    assert rec["mfu"] == pytest.approx(rec["tokens_per_s"] * FLOPS_PER_TOKEN / PEAK)
    assert rec["loss"] == pytest.approx(2.0) and rec["loss/a"] == 1.0 and rec["loss/b"] == 3.0


def test_each_record_covers_its_own_steps(clock):
    """Logging, a validation right after a log line, and a save at a logged step are all left
    out; the next window starts at the flush (its first step's data wait is its own)."""
    w = window()
    step(w, clock, 2.0)
    step(w, clock, 2.0)
    assert flush(w, 2)["tokens_per_s"] == pytest.approx(2 * 16 / 4.0)
    clock.now += 30.0  # validation
    w.restart_clock()
    clock.now += 5.0  # save
    w.restart_clock()
    step(w, clock, 0.5)
    step(w, clock, 0.5)
    clock.now += 7.0  # a save after step 4, not a logged step
    w.restart_clock()
    step(w, clock, 0.5)
    clock.now += 0.25  # time between the last add and the flush (the loss reduction) is not a step's
    assert flush(w, 5)["tokens_per_s"] == pytest.approx(3 * 16 / 1.5)


def test_a_discarded_window_forgets_its_steps_and_their_time(clock):
    """A guard rewind drops the steps since the last flush: the next record counts only what
    was trained after it."""
    w = window()
    step(w, clock, 1.0)
    step(w, clock, 1.0)
    clock.now += 20.0  # the rewind reloads a checkpoint
    w.discard()
    step(w, clock, 4.0)
    assert flush(w, 1)["tokens_per_s"] == pytest.approx(16 / 4.0)
