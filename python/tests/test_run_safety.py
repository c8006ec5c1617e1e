"""Users' work is never lost (issue: "never lose a run"): export / import-hf / demo delete
nothing they did not create; a diverging run never commits non-finite weights nor prunes the
last good checkpoint; one trainer per out dir; resume checks what it resumes onto and falls
back past damaged checkpoints; failures are one line. CPU, tiny models, the real data slice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_hf import MODEL, build_tiny_mix, mix_source, train_config
from test_train import ROOT, write_config

from tinyllama.errors import CheckpointError, LockedError, SpecError, StorageError, TrainingError


def strict_json_lines(path: Path) -> list[dict]:
    """Every line parsed as strict JSON (NaN / Infinity are not JSON)."""

    def no_constants(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return [json.loads(ln, parse_constant=no_constants) for ln in path.read_text().splitlines() if ln.strip()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str, cwd: Path | None = None, env_extra: dict | None = None, preexec=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tinyllama.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, preexec_fn=preexec, timeout=timeout, check=False)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    assert lines and lines[-1].startswith("error: "), r.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return build_tiny_mix(tmp_path_factory.mktemp("safety-mix"))


@pytest.fixture(scope="module")
def run(mix, tmp_path_factory) -> Path:
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("safety-run") / "run"
    train(train_config(mix, out, steps=4, save_every=2, keep_last=3), source=mix_source(mix))
    return out


# ---- 1. export and the other directory writers delete nothing they did not create ------------


def test_export_refuses_a_run_dir_and_a_non_empty_dir(run, tmp_path):
    from tinyllama.hf import export

    before = tree(run)
    with pytest.raises(StorageError, match="not empty and not a previous export"):
        export(run, run)  # `--out RUN` wiped the run before
    assert tree(run) == before
    models = tmp_path / "models"
    (models / "sibling").mkdir(parents=True)
    (models / "sibling" / "weights.bin").write_bytes(b"keep me")
    stale_tmp = tmp_path / "models.tmp"
    stale_tmp.mkdir()
    (stale_tmp / "mine").write_text("not the exporter's")
    with pytest.raises(StorageError, match="models"):
        export(run, models)
    assert (models / "sibling" / "weights.bin").read_bytes() == b"keep me"
    assert (stale_tmp / "mine").read_text() == "not the exporter's"  # OUT.tmp is not ours either


def test_export_replaces_a_previous_export_only_with_force(run, tmp_path):
    from tinyllama.hf import EXPORT_MARKER, export

    out = tmp_path / "hf"
    out.mkdir()  # an empty dir is fine
    export(run, out)
    assert (out / EXPORT_MARKER).is_file() and (out / "model.safetensors").is_file()
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(StorageError, match="--force"):
        export(run / "checkpoints/step-2", out)
    assert (out / "model.safetensors").read_bytes() == first
    export(run / "checkpoints/step-2", out, force=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp dirs left beside it


def test_export_cli_errors_are_one_line(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(cli("export", str(run), "--out", str(blocker / "sub")))
    assert str(blocker) in line
    line = one_line_error(cli("export", str(run), "--out", str(run)))
    assert "export refused" in line and (run / "metrics.jsonl").is_file()


def test_import_hf_refuses_a_non_empty_dir(run, tmp_path):
    from tinyllama.hf import export, import_hf

    hf = export(run, tmp_path / "hf")
    before = tree(run)
    with pytest.raises(StorageError, match="already holds checkpoints"):
        import_hf(hf, run)
    assert tree(run) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(StorageError, match="import-hf refused"):
        import_hf(hf, other)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]


def test_demo_refuses_a_foreign_non_empty_dir(tmp_path):
    from tinyllama.demo import run_demo

    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(StorageError, match="not a previous demo dir"):
        run_demo(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


# ---- 2. a diverging run ---------------------------------------------------------------------


def test_diverging_run_stops_without_committing_nan(mix, tmp_path):
    """A huge learning rate with the guard off (`run.guard.enabled = false`): the step whose
    gradient is not finite is not applied, the run stops naming it, every committed checkpoint
    is finite, keep_last kept the good one, and metrics.jsonl stays valid JSON. (With the guard
    on, the default, the run rewinds and skips first: test_run_health.)"""
    from tinyllama import load_model
    from tinyllama.train import train
    from tinyllama.train.checkpoint import committed_steps

    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = train_config(mix, out, steps=12, save_every=1, keep_last=1)
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.optim.grad_clip = 1e12, 1e11, 0, 0.0
    cfg.run.guard.enabled = False
    with pytest.raises(TrainingError, match=r"step \d+: the loss or gradient norm is not finite") as e:
        train(cfg, source=mix_source(mix))
    steps = committed_steps(out / "checkpoints")
    assert steps, "the good checkpoints before the divergence are kept"
    bad_step = int(str(e.value).split()[1].rstrip(":"))
    assert steps[-1] == bad_step  # the last good step's checkpoint, not pruned by keep_last
    for s in steps:
        model = load_model(out / f"checkpoints/step-{s}")
        assert all(torch.isfinite(p).all() for p in model.parameters())
    strict_json_lines(out / "metrics.jsonl")


def test_guard_off_stop_names_the_step_and_the_last_good_checkpoint(mix, tmp_path, monkeypatch):
    """Guard off, step 5's loss made NaN (the TINYLLAMA_NONFINITE_AT hook), checkpoints every 2
    steps: one line naming step 5 and step-4, the last good checkpoint; step 5 was not applied
    (step-4 is the newest checkpoint and its weights are what --resume continues from)."""
    from tinyllama.train import train
    from tinyllama.train.checkpoint import committed_steps

    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = train_config(mix, out, steps=8, save_every=2, keep_last=5)
    cfg.run.guard.enabled = False
    monkeypatch.setenv("TINYLLAMA_NONFINITE_AT", "5")
    with pytest.raises(TrainingError) as e:
        train(cfg, source=mix_source(mix))
    msg = str(e.value)
    assert msg.startswith("step 5: the loss or gradient norm is not finite") and "\n" not in msg
    assert "Last good checkpoint: step-4 " in msg
    assert committed_steps(out / "checkpoints") == [2, 4]
    assert [m["step"] for m in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_save_refuses_non_finite_weights_and_resume_refuses_them(mix, tmp_path):
    from tinyllama.train import checkpoint as ckpt
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    source = mix_source(mix)
    train(train_config(mix, out, steps=2, save_every=2, keep_last=3), source=source)
    from tinyllama.train.loop import init_model_and_optimizer
    from tinyllama.train.parallel import Dist

    cfg = train_config(mix, out, steps=4)
    d = Dist(rank=0, world=1, local_rank=0, local_world=1, device=torch.device("cpu"), mesh=None)
    model, opt, _ = init_model_and_optimizer(cfg, d)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    save = dict(rank=0, world=1, keep_last=1, barrier=lambda: None)
    with pytest.raises(CheckpointError, match="non-finite weights; not saved.*step-2"):
        ckpt.save(out / "checkpoints", 3, model, opt, {"config": cfg.to_dict(), "tokens": 0}, **save)
    assert ckpt.committed_steps(out / "checkpoints") == [2]
    # A NaN checkpoint written by an older version (forced here): --resume skips it.
    says_finite = lambda obj: [True] if isinstance(obj, bool) else [obj]  # noqa: E731  (the finite vote)
    ckpt.save(out / "checkpoints", 3, model, opt, {"config": cfg.to_dict(), "tokens": 0}, keep_last=3,
              rank=0, world=1, barrier=lambda: None, gather=says_finite)
    train(cfg, resume=True, source=source)
    trainer = json.loads((out / "checkpoints/step-4/trainer.json").read_text())
    assert trainer["step"] == 4
    log = [m["step"] for m in strict_json_lines(out / "metrics.jsonl")]
    assert log == [1, 2, 3, 4]  # resumed from step 2, not from the NaN step 3


# ---- 3. one trainer per out dir -------------------------------------------------------------


HOLD = textwrap.dedent("""
    import sys, time
    from tinyllama.lock import exclusive_dir_lock
    with exclusive_dir_lock(sys.argv[1], "test holder"):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_lock(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_trainer_is_refused_and_changes_nothing(run, mix):
    from tinyllama.train import train

    (run / "checkpoints/step-6.tmp").mkdir()  # a save in progress by the live run
    (run / "checkpoints/step-6.tmp/__0_0.distcp").write_bytes(b"live")
    holder = hold_lock(run)
    before = tree(run)
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}.*train refused"):
            train(train_config(mix, run, steps=6), resume=True, source=mix_source(mix))
    finally:
        holder.kill()
        holder.wait()
    assert tree(run) == before
    shutil.rmtree(run / "checkpoints/step-6.tmp")


def test_a_second_import_hf_is_refused_and_changes_nothing(run, tmp_path):
    """import-hf holds the run dir's lock like train: a second process on the dir is refused
    with one line naming the holder, and writes nothing there."""
    from tinyllama.hf import export, import_hf

    hf = export(run, tmp_path / "hf")
    out = tmp_path / "imported"
    holder = hold_lock(out)
    before = tree(out)
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}.*import-hf refused"):
            import_hf(hf, out)
        line = one_line_error(cli("import-hf", str(hf), "--out", str(out)))
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in line and "import-hf refused" in line
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == [".lock"]
    import_hf(hf, out)  # the holder gone, the same import goes through
    assert (out / "checkpoints/step-0/trainer.json").is_file()


def test_locked_out_dir_via_the_cli_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = write_config(tmp_path, f'mix = "nowhere"\nout = "{out}"\nmodel = "tiny"\n')
    holder = hold_lock(out)
    try:
        line = one_line_error(cli("train", "--config", str(cfg)))
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in line and "nothing was changed" in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# ---- 5. resume checks what it resumes onto ---------------------------------------------------


class LockedSource:
    """A stand-in source that also has a mix lock (as `tinyllama.Mix` does)."""

    def __init__(self, inner, **lock):
        self.inner = inner
        self.lock = {"identity": "a", "name": "m", "seed": 1, "seq_len": inner.seq_len,
                     "tokenizer_sha256": "t", "vocab_size": 32000, **lock}

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_resume_refuses_another_model_or_mix(mix, tmp_path):
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(train_config(mix, out, steps=2), source=LockedSource(mix_source(mix)))
    before = tree(out / "checkpoints")
    wider = train_config(mix, out, steps=4)
    wider.model.intermediate_size = 192
    with pytest.raises(CheckpointError, match="intermediate_size: checkpoint 176 vs config 192"):
        train(wider, resume=True, source=LockedSource(mix_source(mix)))
    with pytest.raises(CheckpointError, match="another mix.*seed: checkpoint 1 vs now 2.*--allow-mix-change"):
        train(train_config(mix, out, steps=4), resume=True, source=LockedSource(mix_source(mix), seed=2))
    assert tree(out / "checkpoints") == before
    train(train_config(mix, out, steps=4), resume=True, source=LockedSource(mix_source(mix), seed=2),
          allow_mix_change=True)
    assert json.loads((out / "checkpoints/step-4/trainer.json").read_text())["mix"]["seed"] == 2


def test_vocab_smaller_than_the_tokenizer_is_refused(mix, tmp_path):
    from tinyllama.train import train

    cfg = train_config(mix, tmp_path / "run", steps=2)
    cfg.model.vocab_size = 1000
    with pytest.raises(SpecError, match="model.vocab_size' = 1000 is smaller .*32000"):
        train(cfg, source=LockedSource(mix_source(mix)))
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- 6. damaged checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip", "metadata"])
def test_resume_falls_back_past_a_damaged_checkpoint(mix, tmp_path, damage, capsys):
    """Steps 2 and 4 committed; step 4 damaged: --resume says so and continues from step 2,
    repeating exactly the losses of an undamaged run."""
    from tinyllama.train import checkpoint as ckpt
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(train_config(mix, out, steps=4, save_every=2, keep_last=3), source=mix_source(mix))
    want = {m["step"]: m["loss"] for m in strict_json_lines(out / "metrics.jsonl")}
    step4 = out / "checkpoints/step-4"
    shard = sorted(step4.glob("*.distcp"))[0]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2 + 3] ^= 0x40  # an exponent bit of some float
        shard.write_bytes(bytes(data))
    else:
        (step4 / ".metadata").unlink()
    assert ckpt.verify(step4) is not None
    with pytest.raises(CheckpointError, match="step-4"):
        ckpt.model_from_checkpoint(step4)
    train(train_config(mix, out, steps=4, save_every=2, keep_last=3), resume=True, source=mix_source(mix))
    err = capsys.readouterr().err
    assert "skipped step-4" in err and "resumed from" in err and "step-2" in err
    got = {m["step"]: m["loss"] for m in strict_json_lines(out / "metrics.jsonl")}
    assert got.keys() == want.keys()
    for s in (3, 4):
        assert got[s] == pytest.approx(want[s], abs=1e-5)
    assert ckpt.verify(step4) is None  # re-saved


@pytest.mark.parametrize("world", [2, 3, 8])
def test_ranks_share_the_checksums_of_a_save(mix, tmp_path, world):
    """Each rank digests its share of a save's files: the shares are disjoint and together are
    exactly the checksums one process records (every file but trainer.json)."""
    from tinyllama.train import checkpoint as ckpt
    from tinyllama.train import train

    out = tmp_path / "run"
    train(train_config(mix, out, steps=1), source=mix_source(mix))
    step = out / "checkpoints/step-1"
    (step / "rng" / "rank-1.pt").write_bytes(b"another rank's rng")  # more files than one rank writes
    whole = ckpt._checksum_share(step, 0, 1)
    files = {p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file()}
    assert whole.keys() == files - {"trainer.json"}
    shares = [ckpt._checksum_share(step, r, world) for r in range(world)]
    assert sum(len(s) for s in shares) == len(whole)
    assert {k: v for s in shares for k, v in s.items()} == whole
    assert json.loads((step / "checksums.json").read_text()) == {
        k: v for k, v in whole.items() if k not in ("checksums.json", "rng/rank-1.pt")}


def test_resume_with_every_checkpoint_damaged_is_one_error(mix, tmp_path):
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(train_config(mix, out, steps=2), source=mix_source(mix))
    (out / "checkpoints/step-2/.metadata").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint can be resumed: step-2: no .metadata"):
        train(train_config(mix, out, steps=4), resume=True, source=mix_source(mix))


# ---- 7. one line instead of a traceback -------------------------------------------------------


@pytest.fixture(scope="module")
def cli_config(mix, tmp_path_factory) -> Path:
    """A train config on the real built mix (read through the Rust ring loader)."""
    d = tmp_path_factory.mktemp("cli")
    model = "\n".join(f"{k} = {v}" for k, v in {**MODEL, "max_seq_len": 128}.items())
    text = textwrap.dedent(f"""\
        mix = "{mix}"
        out = "run"
        micro_batch = 1
        [model]
        {{model}}
        [optim]
        lr = 1e-2
        min_lr = 1e-3
        warmup_steps = 2
        [run]
        max_steps = 3
        log_every = 1
        save_every = 2
        precision = "fp32"
        compile = false
        """).replace("{model}", model)
    return write_config(d, text)


def test_no_space_while_saving_is_one_line(cli_config):
    """The checkpoint write fails (file size limit: EFBIG, as a full disk gives ENOSPC): one
    line naming the save and the intact previous state, no partial save left behind."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # metrics fit, a checkpoint does not

    run_dir = cli_config.parent / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    line = one_line_error(cli("train", "--config", str(cli_config), preexec=limit))
    assert "cannot write checkpoint step-2" in line and "last good checkpoint is none" in line
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    shutil.rmtree(run_dir)


def test_cli_train_resume_torn_metrics_and_existing_checkpoints(cli_config):
    run_dir = cli_config.parent / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = cli("train", "--config", str(cli_config), "--set", "run.max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    line = one_line_error(cli("train", "--config", str(cli_config), "--set", "run.max_steps=2"))
    assert "already holds checkpoints" in line and "--resume" in line
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a kill mid-write
    r = cli("train", "--config", str(cli_config), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not valid JSON" in r.stderr and "dropped" in r.stderr
    assert [m["step"] for m in strict_json_lines(run_dir / "metrics.jsonl")] == [1, 2, 3]
    # `python -m tinyllama.train` gives the same one-line errors
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tinyllama.train", str(cli_config), "--set", "run.max_steps=2"],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "already holds checkpoints" in r.stderr


def test_mix_sample_bad_step_is_one_line(mix):
    line = one_line_error(cli("mix", "sample", str(mix), "--step", "-1"))
    assert "--step -1" in line
    line = one_line_error(cli("mix", "sample", str(mix), "--step", "0", "--rank", "2", "--world", "2"))
    assert "--rank 2" in line


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    from tinyllama.lock import exclusive_dir_lock

    with exclusive_dir_lock(tmp_path, "test"):
        info = json.loads((tmp_path / ".lock").read_text())
        assert info["pid"] == os.getpid()


def test_a_failed_command_removes_the_dir_it_created_and_nothing_else(tmp_path):
    """A command that fails leaves no dir holding only the lock it created (nor the parents it
    created); what it wrote, a dir that was there and a successful command's lock all stay."""
    from tinyllama.lock import exclusive_dir_lock

    target = tmp_path / "a/b"
    with pytest.raises(RuntimeError), exclusive_dir_lock(target, "test"):
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), exclusive_dir_lock(target, "test"):
        (target / "metrics.jsonl").write_text("{}\n")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == [".lock", "metrics.jsonl"]
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError), exclusive_dir_lock(tmp_path / "mine", "test"):
        raise RuntimeError("boom")
    assert list((tmp_path / "mine").iterdir()) == []  # the user's dir stays; the lock it got goes
    with exclusive_dir_lock(tmp_path / "ok", "test"):
        pass
    assert (tmp_path / "ok/.lock").is_file()  # released, not removed


def test_a_lock_on_a_file_its_failed_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """Between this process' open of `.lock` and its flock, a failed holder removes the file and
    its dir: the lock taken on the removed file is dropped and taken again on the path."""
    import fcntl

    from tinyllama.lock import exclusive_dir_lock

    d = tmp_path / "d"
    real, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(d / ".lock")
            os.rmdir(d)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with exclusive_dir_lock(d, "test"):
        assert len(calls) == 2
        assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()  # the file at the path is ours


def test_a_bad_set_is_one_line_naming_the_set_argument(tmp_path):
    """`--set run.max_step=5` is the command line's mistake, not the config file's."""
    from test_train import CONFIG

    cfg = write_config(tmp_path, CONFIG)
    line = one_line_error(cli("train", "--config", str(cfg), "--set", "run.max_step=5"))
    assert line == "error: --set 'run.max_step=5': key 'run.max_step': unknown key; did you mean 'max_steps'?"
    line = one_line_error(cli("train", "--config", str(cfg), "--set", "run.max_steps=5", "--set", "run.log_every=0"))
    assert line == "error: --set 'run.log_every=0': key 'run.log_every': must be > 0"
    cfg.write_text(CONFIG.replace("log_every = 1", "log_every = 0"))  # the file's own mistake names the file
    line = one_line_error(cli("train", "--config", str(cfg), "--set", "run.max_steps=5"))
    assert line == f"error: {cfg}: key 'run.log_every': must be > 0"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_errors_under_torchrun_name_the_rank(mix, tmp_path):
    """`torchrun ... -m tinyllama.train CONFIG`: a user error is one line per rank, each naming
    its rank, with exit status 1 from every worker."""
    import socket

    cfg = write_config(tmp_path, "\n".join([
        f'mix = "{mix}"', 'out = "run"', "micro_batch = 31", "[model]",
        *(f"{k} = {v}" for k, v in {**MODEL, "max_seq_len": 128}.items()),
        "[run]", "max_steps = 2", 'precision = "fp32"', "compile = false", ""]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                        f"--master-port={port}", "-m", "tinyllama.train", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode != 0
    for rank in (0, 1):
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith(f"error (rank {rank}): ")]
        assert "key 'micro_batch'" in line and "world size 2" in line, line
    assert "exitcode  : 1" in r.stderr  # torchrun's summary: the workers exited with status 1
