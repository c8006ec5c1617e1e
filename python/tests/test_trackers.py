"""Weights & Biases (`run.trackers = ["tensorboard", "wandb"]`, train/trackers.py), in offline
mode, read back from the run files W&B wrote: every metrics.jsonl record at its step, the
config with the mix's identity, one W&B run continued by --resume, no step twice after a resume
or a guard rewind, one group for a family's trunk and its branch; and a missing package, no
credentials or a failing service is one warning line while training goes on."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_run_health import GUARD, POISON, events, run_poisoned, steps_of
from test_train import losses, read_metrics, run_inproc, streams, write_config

__all__ = ["streams"]  # the fixture, re-exported for pytest

WANDB = ['run.trackers=["tensorboard", "wandb"]', 'run.wandb.mode="offline"', 'run.wandb.project="t"']


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own files (settings, cache) in the test's dir; no credentials, no env mode."""
    pytest.importorskip("wandb")  # the `wandb` extra (.ci/run installs it)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "wandb-home"


# ---- reading what W&B recorded ---------------------------------------------------------------


def _records(path: Path):
    """The protobuf records of a `.wandb` run file (LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type FULL=1 / FIRST / MIDDLE / LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r


def recorded(out: Path) -> dict:
    """{"runs": [{"id", "group", "name", "project", "config"}], "history": [(step, {key: value})]}
    over every W&B run file under out/wandb, oldest first."""
    import wandb

    wandb.teardown()  # W&B's service writes the end of a finished run's file after finish() returns
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: (p.stat().st_mtime_ns, p))
    runs, history = [], []
    for f in files:
        for r in _records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
                runs.append({"id": r.run.run_id, "group": r.run.run_group, "name": r.run.display_name,
                             "project": r.run.project, "config": config})
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                history.append((r.history.step.num, {k: v for k, v in row.items() if not k.startswith("_")}))
    return {"runs": runs, "history": history}


def column(history, key: str) -> dict[int, object]:
    """step -> value of `key`; a step holding the key twice is an error here."""
    out: dict[int, object] = {}
    for step, row in history:
        if key in row:
            assert step not in out, f"W&B holds {key} at step {step} twice"
            out[step] = row[key]
    return out


# ---- the checks ------------------------------------------------------------------------------


def test_every_record_goes_to_wandb_at_its_step_and_resume_continues_the_run(streams, tmp_path, wandb_home, capsys):
    """12 steps stopped after 6 with checkpoints at 4 and 6; step-6 is then lost (as a kill
    before its commit would leave it), so --resume goes back to step 4 and replays 5 and 6:
    W&B holds each step once, with the losses of metrics.jsonl, in one run (the same id)."""
    cfg = write_config(tmp_path)
    run_inproc(cfg, streams, WANDB + ["run.save_every=4", "run.stop_after=6"])
    out = tmp_path / "run"
    state = json.loads((out / "wandb-run.json").read_text())
    assert state["sent"] == {"train": 6}
    ckpts = out / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "step-6")
    (ckpts / "latest").write_text("step-4\n")
    final = run_inproc(cfg, streams, WANDB + ["run.save_every=4"], resume=True)
    got = recorded(out)
    assert [r["id"] for r in got["runs"]] == [state["id"]] * 2  # one W&B run, continued
    assert got["runs"][0]["project"] == "t" and got["runs"][0]["name"] == "run"
    config = got["runs"][0]["config"]
    assert config["run"]["trackers"] == ["tensorboard", "wandb"] and config["model"]["n_embd"] == 64
    assert "mix_identity" in config and config["world"] == 1
    assert column(got["history"], "loss") == pytest.approx(losses(final), rel=1e-6)  # 1..12, once each
    assert column(got["history"], "lr") == pytest.approx({m["step"]: m["lr"] for m in final})
    assert column(got["history"], "tokens") == {m["step"]: m["tokens"] for m in final}
    assert sorted(column(got["history"], "tokens_per_s")) == list(range(1, 13))
    assert json.loads((out / "wandb-run.json").read_text())["sent"] == {"train": 12}
    assert (out / "tb").is_dir()  # TensorBoard still written
    err = capsys.readouterr().err
    assert "warning" not in err and f"wandb: run {state['id']}" in err


def test_a_guard_rewind_leaves_no_step_twice(streams, tmp_path, wandb_home):
    """The planted spike at step 9 rewinds to step-6 (save_every 6), replays 7 and 8, skips 9:
    W&B holds steps 7 and 8 once (the replay gave the same losses), the rewind and skip events
    at step 9, and the steps after."""
    cfg = write_config(tmp_path)
    metrics = run_poisoned(cfg, streams, GUARD + WANDB + ["run.save_every=6"])
    (rw,) = events(metrics, "rewind")
    assert rw["to"] == "step-6"
    got = recorded(tmp_path / "run")
    steps = steps_of(metrics)
    assert column(got["history"], "loss") == pytest.approx(losses(steps), rel=1e-6)
    assert column(got["history"], "event/rewind") == {POISON: 1}
    assert column(got["history"], "event/rewind/bad_loss") == pytest.approx({POISON: rw["bad_loss"]})
    assert column(got["history"], "event/rewind/skip") == {POISON: 1}  # the skip list, by its length
    assert column(got["history"], "event/skip") == {POISON: 1}
    assert "event/rewind/why" in dict(got["history"])[POISON]


def test_wandb_missing_or_failing_is_one_warning_line_and_training_goes_on(streams, tmp_path, monkeypatch, capsys):
    # not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    run_inproc(write_config(tmp_path / "a"), streams, WANDB + ["run.max_steps=3"])
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith(("warning", "wandb"))] == [
        "warning: run.trackers: wandb is not installed (pip install 'tinyllama-forge[wandb]'); training goes on "
        "without W&B"]
    assert [m["step"] for m in read_metrics(tmp_path / "a/run")] == [1, 2, 3]

    # a service that cannot be reached
    def refuse(**kw):
        raise ConnectionError("network unreachable\nwhile contacting the server")

    fake = types.SimpleNamespace(init=refuse, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_inproc(write_config(tmp_path / "b"), streams, WANDB + ["run.max_steps=3"])
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith(("warning", "wandb"))] == [
        "warning: run.trackers: wandb could not start a run (ConnectionError: while contacting the server); "
        "training goes on without W&B"]
    assert [m["step"] for m in read_metrics(tmp_path / "b/run")] == [1, 2, 3]

    # a service that fails in the middle of the run: one line, nothing more is sent
    sent = []

    class Run:
        id, url = "x1", None

        def log(self, payload, step):
            if step == 2:
                raise OSError("broken pipe")
            sent.append(step)

        def finish(self):
            sent.append("finish")

    fake.init = lambda **kw: Run()
    run_inproc(write_config(tmp_path / "c"), streams, WANDB + ["run.max_steps=4"])
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        "warning: run.trackers: wandb failed (OSError: broken pipe); training goes on without W&B"]
    assert sent == [1]
    assert [m["step"] for m in read_metrics(tmp_path / "c/run")] == [1, 2, 3, 4]


def test_online_without_credentials_is_one_line_not_a_login_prompt(streams, tmp_path, wandb_home, capsys):
    run_inproc(write_config(tmp_path), streams, ['run.trackers=["wandb"]', "run.max_steps=2"])
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith(("warning", "wandb"))]
    assert line.startswith("warning: run.trackers: wandb: no API key (run `wandb login`")
    assert line.endswith("training goes on without W&B")
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2]
    assert not (tmp_path / "run/tb").exists()  # "tensorboard" not in run.trackers


# ---- a family: the trunk and its branch in one group -------------------------------------------


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    from test_family import family_spec

    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("family")
    build_mix(family_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


def test_a_family_trunk_and_branch_share_a_group_and_validation_goes_too(family, tmp_path, wandb_home):
    from test_family import run, train_config

    import tinyllama

    trunk = run(train_config(tmp_path / "trunk", family, tmp_path / "trunk/run"), *WANDB)
    got = recorded(tmp_path / "trunk/run")
    (meta,) = got["runs"]
    assert meta["group"] == "fam-run"  # the mix's name and the trunk's run dir
    assert meta["config"]["mix_identity"]["identity"] == tinyllama.Mix(family).lock["identity"]
    assert column(got["history"], "loss") == pytest.approx(losses(steps_of(trunk)), rel=1e-6)
    val = [m for m in read_metrics(tmp_path / "trunk/run") if "val/loss" in m]
    assert column(got["history"], "val/loss") == pytest.approx({m["step"]: m["val/loss"] for m in val})
    assert sorted(column(got["history"], "val/loss")) == [4, 8]

    before = (tmp_path / "trunk/run/wandb-run.json").read_bytes()
    branch_cfg = train_config(tmp_path / "branch", family, tmp_path / "branch/run")
    run(branch_cfg, *WANDB, 'branch="chinese"', f'branch_from="{tmp_path / "trunk/run"}"')
    (bmeta,) = recorded(tmp_path / "branch/run")["runs"]
    assert bmeta["group"] == "fam-run" and bmeta["id"] != meta["id"]
    assert bmeta["config"]["branch"] == "chinese"
    assert (tmp_path / "trunk/run/wandb-run.json").read_bytes() == before  # the trunk's dir only read

    # an explicit group wins, and a branch of that trunk follows it
    run(train_config(tmp_path / "t2", family, tmp_path / "t2/run"), *WANDB, 'run.wandb.group="mine"',
        "run.stop_after=8")
    run(train_config(tmp_path / "b2", family, tmp_path / "b2/run"), *WANDB, 'branch="code"',
        f'branch_from="{tmp_path / "t2/run"}"', "run.stop_after=9")
    assert [r["group"] for r in recorded(tmp_path / "b2/run")["runs"]] == ["mine"]
