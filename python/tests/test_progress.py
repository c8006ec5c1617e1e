"""The step line (train/progress.py): step / total, tokens seen / total, elapsed, an ETA from
the recent rate, tokens/s and MFU; a rich bar on a terminal, plain lines otherwise. Driven
with a fake clock: no timing, no sleeps."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
rich_console = pytest.importorskip("rich.console")

from tinyllama.train import progress as progress_mod
from tinyllama.train.progress import Progress, schedule_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(step: int, tokens: int, **kw) -> dict:
    return {"step": step, "tokens": tokens, "loss": 2.5, "lr": 3e-4, "grad_norm": 0.75, "tokens_per_s": 1234.0,
            "mfu": 0.412, **kw}


def test_plain_line_has_every_part_and_the_eta_follows_the_recent_rate():
    """4 steps of 100 tokens at 10 s each, then 4 steps of 400 tokens (the batch quadrupled)
    at 10 s each: with a window of 2 records the ETA is the tokens left at the new rate, not
    the rate since the start."""
    clock, out = Clock(), io.StringIO()
    p = Progress(12, 4000, stream=out, tty=False, clock=clock, window=2)
    tokens = 0
    for step in range(1, 9):
        clock.now += 10
        tokens += 100 if step <= 4 else 400
        p.update(record(step, tokens, mfu=0.412 if step < 8 else None))
    lines = out.getvalue().splitlines()
    assert len(lines) == 8
    assert lines[0] == ("step 1/12 tokens 100/4.0K loss 2.5000 lr 3.00e-04 gnorm 0.750 1,234 tok/s mfu 41.2% "
                        "elapsed 10s ETA 6m30s")  # 3900 tokens left at 10 tok/s
    # step 8: 2000 tokens seen, 2000 left; the last two intervals ran at 40 tok/s -> 50 s
    assert lines[7] == ("step 8/12 tokens 2.0K/4.0K loss 2.5000 lr 3.00e-04 gnorm 0.750 1,234 tok/s "
                        "elapsed 1m20s ETA 50s")


def test_eta_by_steps_without_a_token_total_and_unknown_before_a_rate():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, None, start_step=4, start_tokens=40, stream=out, tty=False, clock=clock)
    assert p.line(record(4, 40)).endswith("elapsed 0s ETA ?")  # no time has passed: no rate yet
    clock.now += 6
    line = p.line(record(6, 60))
    assert line.startswith("step 6/10 tokens 60 loss") and line.endswith("ETA 12s")  # 4 steps at 1 step / 3 s


def test_a_rewind_restarts_the_window_and_keeps_the_last_rate():
    clock, out = Clock(), io.StringIO()
    p = Progress(20, 2000, stream=out, tty=False, clock=clock, window=3)
    for step in (1, 2, 3):
        clock.now += 1
        p.update(record(step, step * 100))  # 100 tok/s
    clock.now += 50  # the rewind reloads a checkpoint
    line = p.update(record(2, 200))  # back at step 2: the window starts again here
    assert line.endswith("ETA 18s")  # 1800 left at the last known 100 tok/s, not at 1300 / 53 s
    clock.now += 4
    assert p.update(record(3, 300)).endswith("ETA 1m08s")  # 1700 left at 25 tok/s (the new window)


def test_a_terminal_gets_a_rich_bar_with_messages_above_it():
    clock, out = Clock(), io.StringIO()
    console = rich_console.Console(file=out, force_terminal=True, width=80, color_system=None)
    p = Progress(4, 400, stream=out, tty=True, console=console, clock=clock)
    assert p in progress_mod._OPEN
    for step in (1, 2):
        clock.now += 5
        p.update(record(step, step * 100))
    p.message("saved runs/x/checkpoints/step-2")
    progress_mod.close_all()  # what train() does when the run ends with an error
    assert p.bar is None and p not in progress_mod._OPEN
    text = out.getvalue()
    assert "━" in text and " 50%" in text  # a drawn bar, by tokens: 200 of 400
    assert "step 2/4" in text and "tokens 200/400 elapsed 10s ETA 10s" in text
    # the numbers on a line of their own: both lines fit 80 columns, nothing cut off
    assert "\nloss 2.5000 lr 3.00e-04 gnorm 0.750 1,234 tok/s mfu 41.2%" in text and "…" not in text
    assert "saved runs/x/checkpoints/step-2\n" in text
    assert text.startswith("\x1b[?25l") and text.endswith("\x1b[?25h")  # the cursor comes back


def test_schedule_tokens_from_the_stage_table_and_step_by_step():
    class Sampler:
        def stage_steps(self):
            return [(0, 6), (6, 10)]

    mix_like = SimpleNamespace(seq_len=8, sampler=Sampler(), batch_sequences=lambda s: 4 if s < 6 else 16)
    assert schedule_tokens(mix_like, 10) == (6 * 4 + 4 * 16) * 8
    assert schedule_tokens(mix_like, 8) == (6 * 4 + 2 * 16) * 8
    stand_in = SimpleNamespace(seq_len=8, batch_sequences=lambda s: 4 if s < 6 else 16)
    assert schedule_tokens(stand_in, 8) == (6 * 4 + 2 * 16) * 8
    assert schedule_tokens(SimpleNamespace(batch_sequences=lambda s: 4), 8) is None


def test_a_training_run_prints_plain_step_lines(tmp_path, capsys):
    """Not a terminal (pytest's capture): one plain line per logged step, with the stand-in
    source's token total (steps [0, 6) 4 x 64 tokens, then 16 x 64)."""
    from test_train import CONFIG, encode_streams, run_inproc, write_config

    streams = encode_streams(tmp_path)
    config = write_config(tmp_path / "cfg", CONFIG.replace("max_steps = 12", "max_steps = 8"))
    run_inproc(config, streams, overrides=["run.log_every=4"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    total = (6 * 4 + 2 * 16) * 64
    assert [ln.split(" loss ")[0] for ln in lines] == [f"step 4/8 tokens 1.0K/{total / 1000:.1f}K",
                                                       f"step 8/8 tokens {total / 1000:.1f}K/{total / 1000:.1f}K"]
    assert all(" tok/s elapsed " in ln and " ETA " in ln for ln in lines)
    assert lines[-1].endswith("ETA 0s")
