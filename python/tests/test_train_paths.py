"""Trainer paths the README claims, on this machine: bf16 autocast on CPU, `torch.compile` on
CPU (slow), SIGUSR1 (Slurm's `--signal=USR1@...`) like SIGTERM. Same stand-in data as
test_train.py (the slice's documents as token streams)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_train import _trainer_process, losses, run_inproc, signal_at_step, streams, write_config  # noqa: F401


def test_bf16_autocast_on_cpu_trains_and_differs_from_fp32(streams, tmp_path):  # noqa: F811
    """precision = "bf16" on CPU runs the forward under bf16 autocast: the loss still falls,
    and the numbers differ from fp32's (so the switch does something)."""
    fp32 = losses(run_inproc(write_config(tmp_path / "a"), streams, ["run.max_steps=6"]))
    bf16 = losses(run_inproc(write_config(tmp_path / "b"), streams, ["run.max_steps=6", 'run.precision="bf16"']))
    assert sorted(bf16) == sorted(fp32)
    assert bf16[6] < bf16[1] - 0.5
    assert any(abs(bf16[s] - fp32[s]) > 1e-4 for s in fp32)
    for s in fp32:  # ... but only by bf16 rounding
        assert bf16[s] == pytest.approx(fp32[s], rel=5e-2), s


def test_bf16_autocast_reaches_the_matmuls(monkeypatch):
    """The autocast context the trainer builds for a CPU bf16 run makes the model's linear
    layers compute in bf16."""
    from tinyllama.train.config import config_from_dict
    from tinyllama.train.loop import init_model_and_optimizer
    from tinyllama.train.parallel import Dist

    cfg = config_from_dict({"mix": "m", "out": "o", "model": "tiny",
                            "run": {"precision": "bf16", "compile": False}})
    d = Dist(rank=0, world=1, local_rank=0, local_world=1, device=torch.device("cpu"), mesh=None)
    model, _, amp = init_model_and_optimizer(cfg, d)
    seen = []
    hook = model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with amp:
        model(torch.randint(0, 32000, (1, 8)))
    hook.remove()
    assert seen == [torch.bfloat16]


@pytest.mark.slow
def test_compiled_blocks_on_cpu_match_eager(streams, tmp_path):  # noqa: F811
    eager = losses(run_inproc(write_config(tmp_path / "a"), streams, ["run.max_steps=3"]))
    compiled = losses(run_inproc(write_config(tmp_path / "b"), streams, ["run.max_steps=3", "run.compile=true"]))
    assert sorted(compiled) == sorted(eager)
    for s in eager:
        assert compiled[s] == pytest.approx(eager[s], rel=1e-4, abs=1e-4), s


def test_sigusr1_saves_and_stops_like_sigterm(streams, tmp_path):  # noqa: F811
    from tinyllama.train.checkpoint import committed_steps

    cfg = write_config(tmp_path)
    proc = _trainer_process(cfg, streams, 1, signal_at_step(2, "SIGUSR1"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert committed_steps(tmp_path / "run/checkpoints") == [2]
    assert "stopped by SIGUSR1 after step 2" in err
