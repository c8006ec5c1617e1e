"""Clean stop on a signal: SIGTERM (what Slurm sends before a time limit or a preemption, and
what torchrun forwards to its workers) or SIGUSR1 ends the run at the end of the current
optimizer step with a committed checkpoint, so `--resume` loses nothing.

Ranks must agree on the step they stop at (a rank that left early would hang the others in
the next collective), and a signal may reach only some of them: each step, the flag is summed
over the ranks (one integer all-reduce) and every rank stops if any was signalled.
"""

from __future__ import annotations

import signal
import threading

import torch

from tinyllama.train.parallel import Dist, all_reduce_sum

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    """Install with `with StopOnSignal() as stop:`; ask `stop.requested(d)` once per step."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        # Handlers can only be set from the main thread (an embedding app may train elsewhere).
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        self.received = signum

    def requested(self, d: Dist) -> bool:
        """True on every rank when any rank has received a stop signal (a collective call)."""
        if d.world == 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=d.device, dtype=torch.int32)
        return bool(all_reduce_sum(flag).item())

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
