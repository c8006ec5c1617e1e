"""Trainer checks on real data (the committed slice), real torch, CPU.

The data comes from `TokenStreamSource`: the slice's SlimPajama and SkyPile documents, encoded
with the Llama 2 tokenizer by `tinyllama.Tokenizer`, served as deterministic windows with a
global batch that quadruples at `GROW_AT` (like the cooldown stage), so gradient accumulation
has to follow the schedule. This file is also the torchrun entry point of the multi-process
checks (`python test_train.py CONFIG STREAMS [--resume] [--set k=v]`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
SEQ_LEN = 64
GROW_AT = 6  # steps [0, 6): 4 sequences per step; from 6 on: 16
EOS = 2


class TokenStreamSource:
    """A tiny stand-in for `tinyllama.Mix` over per-corpus token streams.

    Global sequence g (counted from step 0) comes from corpus g % n_corpora, window number
    g // n_corpora of that corpus' stream. Rank r of W takes the contiguous slice r of the
    global batch, exactly the Mix contract.
    """

    def __init__(self, streams: dict[str, np.ndarray], steps: int = 1000, seq_len: int = SEQ_LEN):
        self.names = sorted(streams)
        self.streams = [streams[n] for n in self.names]
        self.steps, self.seq_len = steps, seq_len

    def num_steps(self) -> int:
        return self.steps

    def batch_sequences(self, step: int) -> int:
        return 4 if step < GROW_AT else 16

    def _first_seq(self, step: int) -> int:
        small = min(step, GROW_AT)
        return small * 4 + max(0, step - GROW_AT) * 16

    def batch(self, step: int, rank: int = 0, world: int = 1):
        n = self.batch_sequences(step)
        per = n // world
        first = self._first_seq(step) + rank * per
        rows, corpora = [], []
        for g in range(first, first + per):
            c = g % len(self.names)
            s = self.streams[c]
            w = self.seq_len + 1
            start = ((g // len(self.names)) * self.seq_len) % (len(s) - w)
            rows.append(s[start : start + w])
            corpora.append(self.names[c])
        return np.stack(rows).astype(np.int64), corpora


def encode_streams(out: Path) -> Path:
    """Tokenize the slice's documents into one EOS-separated stream per corpus (.npz)."""
    import zstandard

    import tinyllama

    tok_path = out / "tokenizer.json"
    with open(DATA / "tokenizers/llama2/tokenizer.json.zst", "rb") as f:
        tok_path.write_bytes(zstandard.ZstdDecompressor().stream_reader(f).read())
    tok = tinyllama.Tokenizer(tok_path)

    def read_jsonl(path: Path) -> list[dict]:
        if path.suffix == ".zst":
            with open(path, "rb") as f:
                text = io.TextIOWrapper(
                    zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8"
                ).read()
        else:
            text = path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    slim = [
        r["text"]
        for r in read_jsonl(DATA / "corpora/slimpajama/train/chunk1/example_train_0000.jsonl.zst")
        if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"
    ][:150]
    sky = [r["text"] for r in read_jsonl(DATA / "corpora/skypile/2023-01.jsonl")][:150]
    streams = {}
    for name, docs in (("slimpajama", slim), ("skypile", sky)):
        ids = tok.encode_batch(docs)
        streams[name] = np.concatenate([np.append(a.astype(np.int64), EOS) for a in ids])
    path = out / "streams.npz"
    np.savez(path, **streams)
    return path


def load_source(path: str | Path) -> TokenStreamSource:
    with np.load(path) as z:
        return TokenStreamSource({k: z[k] for k in z.files})


CONFIG = """\
mix = "unused-mix"
out = "run"
micro_batch = 2
[model]
n_layer = 2
n_embd = 64
n_head = 4
n_kv_head = 2
intermediate_size = 176
vocab_size = 32000
max_seq_len = 64
[optim]
lr = 1e-2
min_lr = 1e-3
warmup_steps = 3
[run]
max_steps = 12
log_every = 1
save_every = 0
precision = "fp32"
compile = false
"""


def write_config(dir: Path, text: str = CONFIG) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    p = dir / "train.toml"
    p.write_text(text, encoding="utf-8")
    return p


def run_inproc(config: Path, streams: Path, overrides=(), resume=False) -> list[dict]:
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    cfg = load_config(config, overrides)
    train(cfg, resume=resume, source=load_source(streams))
    return read_metrics(Path(cfg.out))


def run_torchrun(nproc: int, config: Path, streams: Path, overrides=(), resume=False, poisoned=False) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        __file__,
        str(config),
        str(streams),
    ]
    cmd += ["--resume"] if resume else []
    cmd += ["--poisoned"] if poisoned else []
    for ov in overrides:
        cmd += ["--set", ov]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return read_metrics(config.parent / "run")


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    return encode_streams(tmp_path_factory.mktemp("streams"))


@pytest.fixture(scope="module")
def baseline(streams, tmp_path_factory) -> list[dict]:
    """12 uninterrupted single-process steps (the reference for the other checks)."""
    return run_inproc(write_config(tmp_path_factory.mktemp("base")), streams)


def losses(metrics: list[dict]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics}


def test_loss_falls_and_metrics(baseline, tmp_path):
    ls = [m["loss"] for m in baseline]
    assert len(ls) == 12
    assert ls[0] > 9.5  # ~ln(32000) at init
    assert np.mean(ls[-3:]) < ls[0] - 1.5, ls
    for m in baseline:
        for key in (
            "step",
            "loss",
            "lr",
            "tokens",
            "tokens_per_s",
            "grad_norm",
            "loss/slimpajama",
            "loss/skypile",
        ):
            assert key in m, key
    # accumulation follows the batch schedule: 4 seqs / micro_batch 2, then 16 / 2
    assert [m["accum_steps"] for m in baseline] == [2] * GROW_AT + [8] * (12 - GROW_AT)
    assert baseline[-1]["tokens"] == (GROW_AT * 4 + (12 - GROW_AT) * 16) * SEQ_LEN
    # the loss is the mean of its corpora's (equal counts of each at every step)
    m = baseline[-1]
    assert m["loss"] == pytest.approx((m["loss/slimpajama"] + m["loss/skypile"]) / 2, rel=1e-5)


def test_resume_is_exact(baseline, streams, tmp_path):
    cfg = write_config(tmp_path)
    first = run_inproc(cfg, streams, ["run.stop_after=5"])
    assert [m["step"] for m in first] == [1, 2, 3, 4, 5]
    assert (tmp_path / "run/checkpoints/step-5/trainer.json").is_file()
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-5"
    resumed = run_inproc(cfg, streams, resume=True)
    assert [m["step"] for m in resumed] == list(range(1, 13))  # metrics.jsonl continues
    base = losses(baseline)
    for step, loss in losses(resumed).items():
        assert loss == base[step], (step, loss, base[step])  # bit-identical on one process


def test_keep_last_and_load_model(streams, tmp_path):
    import torch

    from tinyllama import load_model
    from tinyllama.errors import CheckpointError
    from tinyllama.train.checkpoint import committed_steps

    cfg = write_config(tmp_path)
    run_inproc(cfg, streams, ["run.max_steps=8", "run.save_every=2", "run.keep_last=2"])
    assert committed_steps(tmp_path / "run/checkpoints") == [6, 8]
    assert not list((tmp_path / "run/checkpoints").glob("*.tmp"))
    model = load_model(tmp_path / "run")
    x, _ = load_source(streams).batch(7)
    with torch.no_grad():
        logits = model(torch.from_numpy(x[:, :-1]))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(x[:, 1:]).flatten())
    assert logits.shape == (16, SEQ_LEN, 32000)
    assert loss.item() < 9.0  # trained, not a fresh init (~10.4)
    model6 = load_model(tmp_path / "run/checkpoints/step-6")
    assert not torch.equal(model6.lm_head.weight, model.lm_head.weight)
    # a fresh start into a dir with checkpoints is refused (it would mix two runs)
    with pytest.raises(CheckpointError, match="--resume"):
        run_inproc(cfg, streams)


def test_interrupted_save_is_ignored(tmp_path):
    """A save killed before its rename leaves step-N.tmp/ (no trainer.json or a stale latest):
    the previous committed checkpoint stays the one that is found, and the leftover is cleaned."""
    from tinyllama.train.checkpoint import clean_partial, latest_checkpoint

    ck = tmp_path / "checkpoints"
    (ck / "step-4").mkdir(parents=True)
    (ck / "step-4" / "trainer.json").write_text("{}")
    (ck / "latest").write_text("step-4\n")
    (ck / "step-8.tmp").mkdir()
    (ck / "step-8.tmp" / "__0_0.distcp").write_bytes(b"partial")
    assert latest_checkpoint(ck) == ck / "step-4"
    # a step dir without trainer.json (e.g. copied half-way by hand) is not a checkpoint either
    (ck / "step-6").mkdir()
    (ck / "latest").write_text("step-6\n")
    assert latest_checkpoint(ck) == ck / "step-4"
    clean_partial(ck)
    assert not (ck / "step-8.tmp").exists() and (ck / "step-4").is_dir()


def test_micro_batch_must_divide_the_batch(streams, tmp_path):
    from tinyllama.errors import SpecError

    with pytest.raises(SpecError, match="micro_batch.*step 0 is 4 sequences"):
        run_inproc(write_config(tmp_path), streams, ["micro_batch=3"])


def test_lr_schedule():
    from tinyllama.train.config import config_from_dict
    from tinyllama.train.loop import lr_at

    cfg = config_from_dict(
        {"mix": "m", "out": "o", "model": "tiny", "optim": {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10}}
    )
    # 111 steps: warmup 0..9, then a cosine over steps 10..110 with the last one at min_lr
    assert lr_at(0, cfg, 111) == pytest.approx(0.1)
    assert lr_at(9, cfg, 111) == pytest.approx(1.0)
    assert lr_at(60, cfg, 111) == pytest.approx(0.55)
    assert lr_at(110, cfg, 111) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg, 111) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_from_toml_and_overrides(tmp_path):
    from tinyllama.train.config import load_config

    p = write_config(tmp_path / "cfg", CONFIG.replace('mix = "unused-mix"', 'mix = "../mixes/demo"'))
    cfg = load_config(
        p,
        [
            "run.max_steps=50",
            "optim.betas=[0.8, 0.9]",
            "run.precision=bf16",
            "run.compile=true",
            "model.n_layer=3",
            "optim.lr=1",
        ],
    )
    assert cfg.mix == str((tmp_path / "mixes/demo").resolve())  # relative to the config file
    assert cfg.out == str((tmp_path / "cfg/run").resolve())
    assert (cfg.run.max_steps, cfg.optim.betas, cfg.run.precision, cfg.run.compile) == (
        50,
        (0.8, 0.9),
        "bf16",
        True,
    )
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 64 and cfg.optim.lr == 1.0
    named = load_config(p, ["model=tinyllama-1.1b", "run.keep_last=1"])
    assert named.model.n_layer == 22 and named.run.keep_last == 1
    on_named = load_config(
        write_config(tmp_path / "n", 'mix = "m"\nout = "o"\nmodel = "tiny"\n'), ["model.n_layer=5"]
    )
    assert on_named.model.n_layer == 5 and on_named.model.n_embd == 64  # the rest of "tiny"
    assert on_named.run == type(on_named.run)()  # SPEC defaults
    assert on_named.optim.lr == 4e-4 and on_named.optim.warmup_steps == 2000


@pytest.mark.parametrize(
    "text, overrides, key",
    [
        (CONFIG.replace("max_steps = 12", "max_step = 12"), [], "run.max_step"),
        (CONFIG, ["run.max_stpes=5"], "run.max_stpes"),
        (CONFIG, ["run.max_steps=many"], "run.max_steps"),
        (CONFIG, ["run.precision=fp16"], "run.precision"),
        (CONFIG, ["optim.betas=[0.9]"], "optim.betas"),
        (CONFIG, ["model=llama-70b"], "model"),
        (CONFIG, ["model.n_kv_head=3"], "model.n_kv_head"),
        (CONFIG, ["model.n_heads=3"], "model.n_heads"),
        (CONFIG, ["micro_batch=0"], "micro_batch"),
        (CONFIG, ["optim.min_lr=1"], "optim.min_lr"),
        (CONFIG + "\n[data]\nx = 1\n", [], "data"),
        (CONFIG.replace('mix = "unused-mix"\n', ""), [], "mix"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, overrides, key):
    from tinyllama.errors import SpecError
    from tinyllama.train.config import load_config

    p = write_config(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_config(p, overrides)
    assert f"'{key}'" in str(e.value)
    # A key from the file names the file; a key a --set gave names that --set, not the file.
    if overrides:
        assert str(e.value).startswith(f"--set '{overrides[-1]}': key '{key}'") and str(p) not in str(e.value)
    else:
        assert str(e.value).startswith(f"{p}: key '{key}'")
    assert "\n" not in str(e.value)


def test_config_bad_toml_and_bad_set(tmp_path):
    from tinyllama.errors import SpecError
    from tinyllama.train.config import load_config

    with pytest.raises(SpecError, match="invalid TOML"):
        load_config(write_config(tmp_path, "mix = \n"))
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_config(write_config(tmp_path), ["run.max_steps"])
    with pytest.raises(SpecError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("train-*.toml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    from tinyllama.train.config import load_config

    cfg = load_config(path)
    assert Path(cfg.mix).is_absolute() and cfg.model.validate() == []


@pytest.mark.slow
def test_two_processes_match_one(baseline, streams, tmp_path):
    two = run_torchrun(2, write_config(tmp_path), streams)
    base = losses(baseline)
    got = losses(two)
    assert sorted(got) == sorted(base)
    for step in base:
        assert got[step] == pytest.approx(base[step], rel=1e-4, abs=1e-4), step
    # the gradient itself (not only Adam's scale-free update) equals the one-process gradient
    for a, b in zip(baseline, two):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), a["step"]
    # per-corpus losses are gathered from both ranks
    assert two[-1]["loss/skypile"] == pytest.approx(baseline[-1]["loss/skypile"], rel=1e-3)


@pytest.mark.slow
def test_resume_world_size_1_to_2(baseline, streams, tmp_path):
    cfg = write_config(tmp_path)
    run_inproc(cfg, streams, ["run.stop_after=7"])  # world 1, past the batch-size change
    resumed = run_torchrun(2, cfg, streams, resume=True)
    base = losses(baseline)
    assert [m["step"] for m in resumed] == list(range(1, 13))
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(base[step], rel=1e-4, abs=1e-4), step


def _trainer_process(config: Path, streams: Path, nproc: int, env_extra: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYLLAMA_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})})
    if nproc == 1:
        cmd = [sys.executable, __file__, str(config), str(streams)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
               f"--master-port={port}", __file__, str(config), str(streams)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_at_step(step: int, name: str, rank: int | None = None) -> dict:
    """The fault hook's environment that makes the trainer raise signal `name` in itself right
    after optimizer step `step` (on rank `rank` only, when given): a Slurm stop that lands at a
    chosen step instead of racing the run."""
    env = {"TINYLLAMA_SIGNAL_AFTER": f"step:{step}:{name}"}
    if rank is not None:
        env["TINYLLAMA_FAULT_RANK"] = str(rank)
    return env


def test_sigterm_saves_and_stops_then_resume_continues(baseline, streams, tmp_path):
    """Slurm's SIGTERM before a time limit, arriving during step 3: that step ends, a
    checkpoint is committed (save_every is far away), the process exits 0; --resume repeats
    the uninterrupted run."""
    from tinyllama.train.checkpoint import committed_steps

    cfg = write_config(tmp_path)
    proc = _trainer_process(cfg, streams, 1, signal_at_step(3, "SIGTERM"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert committed_steps(tmp_path / "run/checkpoints") == [3]
    assert "stopped by SIGTERM after step 3" in err
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3]
    resumed = run_inproc(cfg, streams, resume=True)
    assert [m["step"] for m in resumed] == list(range(1, 13))
    base = losses(baseline)
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(base[step], rel=1e-5), step


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_the_same_step(baseline, streams, tmp_path):
    """A signal that reaches only rank 1, at step 3: both ranks agree to stop after that step
    (rank 0 would otherwise hang in the next collective) and save; a 1-process resume continues."""
    from tinyllama.train.checkpoint import committed_steps

    cfg = write_config(tmp_path)
    proc = _trainer_process(cfg, streams, 2, signal_at_step(3, "SIGTERM", rank=1))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert committed_steps(tmp_path / "run/checkpoints") == [3]
    assert "stopped by a signal on another rank after step 3" in err  # rank 0 logs
    resumed = run_inproc(cfg, streams, resume=True)
    base = losses(baseline)
    assert [m["step"] for m in resumed] == list(range(1, 13))
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(base[step], rel=1e-4, abs=1e-4), step


if __name__ == "__main__":  # torchrun entry point
    import argparse

    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("streams")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--poisoned", action="store_true", help="test_run_health's stream with its planted spike")
    a = ap.parse_args()
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    if a.poisoned:
        from test_run_health import poisoned

        source = poisoned(a.streams)
    else:
        source = load_source(a.streams)
    train(load_config(a.config, a.overrides), resume=a.resume, source=source)


def test_mfu_against_a_hand_count(streams, tmp_path):
    """MFU = tokens/s x FLOPs/token / peak. FLOPs/token of the test model counted by hand
    (PaLM's 6N + 12 L d T, N without the input embedding), and an explicit peak so a CPU run
    reports it."""
    from tinyllama.model import ModelConfig

    m = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, max_seq_len=SEQ_LEN)
    attn = 64 * 64 * 2 + 64 * (2 * 16) * 2  # q, o + k, v (2 KV heads of 16)
    mlp = 3 * 64 * 176
    n = 2 * (attn + mlp + 2 * 64) + 64 + 32000 * 64  # layers, final norm, lm_head
    assert n == 2_140_480
    assert m.flops_per_token(SEQ_LEN) == 6 * n + 12 * 2 * 64 * SEQ_LEN == 12_941_184
    metrics = run_inproc(write_config(tmp_path), streams, ["run.max_steps=2", "run.peak_tflops=0.5"])
    for rec in metrics:
        assert rec["mfu"] == pytest.approx(rec["tokens_per_s"] * 12_941_184 / 0.5e12, rel=1e-9)
