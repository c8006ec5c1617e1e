"""The step line people plan by (rank 0): step / total, tokens seen / total, the elapsed time,
an ETA from the recent rate, tokens/s and MFU, with the loss, lr and gradient norm.

On a terminal it is a rich progress bar redrawn in place (two lines that fit 80 columns: the
bar with step, tokens, elapsed and ETA; then loss, lr, gradient norm, tokens/s and MFU), with
messages (saves, validation, the guard) printed above it; anywhere else (a log file, Slurm's
output) one plain line per logged step:

    step 40/74 tokens 163.8K/303.1K loss 6.1234 lr 3.20e-04 gnorm 0.812 11,877 tok/s mfu 41.2% elapsed 1m12s ETA 57s

The ETA divides the tokens left by the wall-clock rate over the last `window` logged steps
(saves and validations included: that is what the remaining steps will cost), so the cooldown
stage's larger batch does not skew it and a slow first step (compiling) soon drops out of it.
A rewind (the guard) or a resume starts the window afresh.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections import deque
from typing import Callable

from tinyllama.data.progress import duration, human


def schedule_tokens(source, end: int) -> int | None:
    """Tokens the schedule trains in steps [0, end): from the stage table (the global batch is
    constant within a stage), or step by step for a stand-in source without one. None when the
    source does not say its sequence length."""
    seq_len = getattr(source, "seq_len", None)
    if callable(seq_len):
        seq_len = seq_len()
    if not seq_len:
        return None
    sampler = getattr(source, "sampler", None)
    if sampler is not None and hasattr(sampler, "stage_steps"):
        spans = [(first, min(last, end)) for first, last in sampler.stage_steps() if first < end]
        return sum((last - first) * source.batch_sequences(first) for first, last in spans) * int(seq_len)
    return sum(source.batch_sequences(s) for s in range(end)) * int(seq_len)


# the bars on screen, so that `close_all` can end them when the run ends with an error
_OPEN: weakref.WeakSet[Progress] = weakref.WeakSet()


def run_progress(source, end: int, step: int, tokens: int, enabled: bool) -> Progress | None:
    """The step line of a run that trains to step `end` of `source`'s schedule, resumed at
    `step` with `tokens` seen (rank 0 only: None elsewhere)."""
    return Progress(end, schedule_tokens(source, end), start_step=step, start_tokens=tokens) if enabled else None


def close_all() -> None:
    """End every bar still on screen (a run stopped by an error: its one-line message must
    not land on the bar's line, and the terminal gets its cursor back)."""
    for p in list(_OPEN):
        p.close()


def _fmt(v, spec: str) -> str:
    return "nan" if v is None else format(v, spec)


class Progress:
    """`update(record)` with each logged step record (metrics.jsonl's), `message(text)` for
    any other line, `close()` at the end. `clock` is injectable for tests."""

    def __init__(self, total_steps: int, total_tokens: int | None = None, *, start_step: int = 0,
                 start_tokens: int = 0, stream=None, tty: bool | None = None, console=None,
                 clock: Callable[[], float] = time.monotonic, window: int = 10):
        self.total_steps, self.total_tokens = total_steps, total_tokens
        self.stream = stream if stream is not None else sys.stderr
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()) if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.recent: deque[tuple[float, int, int]] = deque(maxlen=max(2, window + 1))
        self.recent.append((self.started, start_tokens, start_step))
        self.rate: tuple[float, float] | None = None  # (tokens/s, steps/s) of the last full window
        self.bar = self.task = None
        if self.tty:
            self._open_bar(console, start_step, start_tokens)

    # ---- the numbers ------------------------------------------------------------------

    def eta(self, step: int, tokens: int) -> float | None:
        """Seconds left at the recent rate: by tokens when the total is known (batch sizes
        change between stages), else by steps. None before there is a rate."""
        (t0, k0, s0), (t1, k1, s1) = self.recent[0], self.recent[-1]
        if t1 > t0 and (k1 > k0 or s1 > s0):
            self.rate = ((k1 - k0) / (t1 - t0), (s1 - s0) / (t1 - t0))
        if self.rate is None:
            return None
        tok_rate, step_rate = self.rate
        if self.total_tokens and tok_rate > 0:
            return max(self.total_tokens - tokens, 0) / tok_rate
        return max(self.total_steps - step, 0) / step_rate if step_rate > 0 else None

    def parts(self, record: dict) -> dict[str, str]:
        """The step line's parts for `record` (updates the rate window): "step", "tokens",
        "numbers" (loss, lr, gradient norm, tokens/s, MFU) and "time" (elapsed, ETA)."""
        step, tokens = int(record["step"]), int(record.get("tokens") or 0)
        now = self.clock()
        if self.recent and (tokens < self.recent[-1][1] or step < self.recent[-1][2]):
            self.recent.clear()  # a rewind: the rate before it stays until a new one is known
        self.recent.append((now, tokens, step))
        eta = self.eta(step, tokens)
        total = f"/{human(self.total_tokens)}" if self.total_tokens else ""
        mfu = f" mfu {record['mfu'] * 100:.1f}%" if record.get("mfu") is not None else ""
        return {
            "step": f"step {step}/{self.total_steps}",
            "tokens": f"tokens {human(tokens)}{total}",
            "numbers": (f"loss {_fmt(record.get('loss'), '.4f')} lr {_fmt(record.get('lr'), '.2e')} "
                        f"gnorm {_fmt(record.get('grad_norm'), '.3f')} "
                        f"{_fmt(record.get('tokens_per_s'), ',.0f')} tok/s{mfu}"),
            "time": f"elapsed {duration(now - self.started)} ETA {'?' if eta is None else duration(eta)}",
        }

    def line(self, record: dict) -> str:
        """The plain step line of `record` (updates the rate window)."""
        p = self.parts(record)
        return f"{p['step']} {p['tokens']} {p['numbers']} {p['time']}"

    # ---- output -------------------------------------------------------------------------

    def update(self, record: dict) -> str:
        p = self.parts(record)
        text = f"{p['step']} {p['tokens']} {p['numbers']} {p['time']}"
        if self.bar is None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            done = int(record.get("tokens") or 0) if self.total_tokens else int(record["step"])
            self.bar.update(self.task, completed=done, head=p["step"], tail=f"{p['tokens']} {p['time']}")
            self.bar.detail = p["numbers"]
            self.bar.refresh()
        return text

    def message(self, text: str) -> None:
        if self.bar is None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        _OPEN.discard(self)

    def _open_bar(self, console, start_step: int, start_tokens: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class TwoLines(RichProgress):
            """The bar's line, then the step's numbers below it."""

            detail = ""

            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                if self.detail:
                    yield Text(self.detail, no_wrap=True, overflow="ellipsis")

        console = console or Console(file=self.stream, stderr=self.stream is sys.stderr)
        self.bar = TwoLines(TextColumn("{task.fields[head]}", markup=False), BarColumn(bar_width=None),
                            TaskProgressColumn(), TextColumn("{task.fields[tail]}", markup=False), console=console,
                            auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        total = self.total_tokens or self.total_steps
        self.task = self.bar.add_task("train", total=total, completed=start_tokens if self.total_tokens else start_step,
                                      head=f"step {start_step}/{self.total_steps}", tail="")
        self.bar.start()
        _OPEN.add(self)
