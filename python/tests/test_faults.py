"""Kill at any instant, at an exact instant: every fault point of train, export and import-hf
(tinyllama/fault.py lists them; the build's are in test_build.py). For each point, the command
aborts there (`os.abort`: what a SIGKILL leaves), the previous good state is usable, and a
rerun / `--resume` ends with the losses and bytes of an uninterrupted run. The runs train a
tiny model on a real built mix through the Rust ring loader, each in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_hf import MODEL, build_tiny_mix
from test_train import ROOT

STEPS, SAVE_EVERY, POISON = 6, 2, 3


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return build_tiny_mix(tmp_path_factory.mktemp("faults-mix"))


def train_config(dir: Path, mix: Path) -> Path:
    model = "\n".join(f"{k} = {v}" for k, v in {**MODEL, "max_seq_len": 128}.items())
    text = textwrap.dedent(f"""\
        mix = "{mix}"
        out = "run"
        micro_batch = 31  # the global batch: 4K tokens = 31 windows of 129
        [model]
        {{model}}
        [optim]
        lr = 1e-2
        min_lr = 1e-3
        warmup_steps = 2
        [run]
        max_steps = {STEPS}
        log_every = 1
        save_every = {SAVE_EVERY}
        keep_last = 2
        precision = "fp32"
        compile = false
        """).replace("{model}", model)
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "train.toml").write_text(text, encoding="utf-8")
    return dir / "train.toml"


def cli(*args, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYLLAMA_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "tinyllama.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def aborted(r: subprocess.CompletedProcess, point: str) -> None:
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stderr[-3000:])
    name, n = point.split(":")
    assert f"TINYLLAMA_ABORT_AFTER: aborting after {name} #{n}" in r.stderr


def step_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def events(run: Path, kind: str) -> list[dict]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [m for m in lines if m.get("event") == kind]


def checkpoint_bytes(step_dir: Path) -> dict:
    """What a checkpoint holds: the checksums of its weights and optimizer state (the DCP
    shards) and trainer.json without this run's own paths. Not compared: DCP's `.metadata` (it
    records a random id and the dir's path) and `rng/` (each process's unseeded global RNG
    states, which training never draws from: the weights are initialised from their own
    generators)."""
    trainer = json.loads((step_dir / "trainer.json").read_text())
    trainer["config"].pop("out", None)
    trainer["config"].pop("source", None)  # the train config's path
    sums = json.loads((step_dir / "checksums.json").read_text())
    shards = {k: v for k, v in sums.items() if k.endswith(".distcp")}
    assert shards and sorted(sums) == sorted([*shards, ".metadata", "rng/rank-0.pt"])
    return {"shards": shards, "trainer": trainer}


@pytest.fixture(scope="module")
def reference(mix, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    cfg = train_config(tmp_path_factory.mktemp("ref"), mix)
    ok(cli("train", "--config", cfg))
    return cfg.parent / "run"


@pytest.fixture(scope="module")
def poisoned_reference(mix, tmp_path_factory) -> Path:
    """The uninterrupted run whose step POISON has a non-finite loss: the guard rewinds to
    step-2 and skips it."""
    cfg = train_config(tmp_path_factory.mktemp("ref-poisoned"), mix)
    ok(cli("train", "--config", cfg, env_extra={"TINYLLAMA_NONFINITE_AT": str(POISON)}))
    return cfg.parent / "run"


# point -> (the newest checkpoint `--resume` finds intact after the abort, what `latest` says)
TRAIN_POINTS = {
    "save-files:2": (2, "step-2"),  # step-4.tmp holds the files, no checksums
    "save-checksums:2": (2, "step-2"),  # step-4.tmp complete, not renamed
    "save-commit:2": (4, "step-2"),  # step-4 committed, `latest` still on step-2
    "latest:2": (4, "step-4"),  # `latest` moved, keep-last not yet pruned
    "metrics:3": (2, "step-2"),  # the line of step 3 torn in half
}


# Points that leave the same kind of state as a faster one (an uncommitted step-N.tmp, or a
# committed step the resume continues from): CI's slow run.
SLOW_POINTS = {"save-files:2", "save-checksums:2", "latest:2"}


@pytest.mark.parametrize("point", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_POINTS else p
                                   for p in sorted(TRAIN_POINTS)])
def test_train_aborted_at_a_point_resumes_to_the_same_losses_and_bytes(mix, reference, tmp_path, point):
    from tinyllama import load_model
    from tinyllama.train.checkpoint import latest_checkpoint, resume_candidates

    cfg = train_config(tmp_path, mix)
    run = tmp_path / "run"
    aborted(cli("train", "--config", cfg, env_extra={"TINYLLAMA_ABORT_AFTER": point}), point)
    # The previous good state is usable: the newest intact checkpoint verifies and loads.
    want_step, want_latest = TRAIN_POINTS[point]
    good, bad = resume_candidates(run / "checkpoints")
    assert bad == [] and good[0].name == f"step-{want_step}"
    assert (run / "checkpoints/latest").read_text().strip() == want_latest
    assert latest_checkpoint(run / "checkpoints").name == want_latest
    model = load_model(good[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if point.startswith("metrics"):
        assert not (run / "metrics.jsonl").read_text().endswith("\n")  # the torn line is there
    # --resume ends exactly where the uninterrupted run ends.
    r = ok(cli("train", "--config", cfg, "--resume"))
    assert f"resumed from {good[0]}" in r.stderr
    assert step_losses(run) == step_losses(reference)  # bit-identical, every step once
    assert checkpoint_bytes(run / f"checkpoints/step-{STEPS}") == checkpoint_bytes(
        reference / f"checkpoints/step-{STEPS}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "checkpoints").iterdir())  # keep-last pruned the same; no .tmp left


def test_a_poisoned_step_is_rewound_and_skipped_on_the_real_loader(reference, poisoned_reference):
    (rw,) = events(poisoned_reference, "rewind")
    assert rw["step"] == POISON and rw["to"] == "step-2" and rw["skip"] == [POISON] and rw["bad_loss"] is None
    assert [e["step"] for e in events(poisoned_reference, "skip")] == [POISON]
    got, want = step_losses(poisoned_reference), step_losses(reference)
    # The steps up to the checkpoint, and the replayed step before the poisoned one, equal the
    # unpoisoned run's; the skipped step has no loss line; after it the weights differ.
    assert sorted(got) == [s for s in range(1, STEPS + 1) if s != POISON + 1]
    assert {s: got[s] for s in (1, 2, 3)} == {s: want[s] for s in (1, 2, 3)}
    assert got[STEPS] != want[STEPS]


def test_train_aborted_inside_a_rewind_resumes_to_the_same_losses(mix, poisoned_reference, tmp_path):
    """Killed inside the guard's rewind (the skip list logged, no checkpoint holds it yet):
    `--resume` goes back to the last checkpoint, meets the poisoned step again, skips it, and
    ends as the uninterrupted guarded run."""
    cfg = train_config(tmp_path, mix)
    run = tmp_path / "run"
    poison = {"TINYLLAMA_NONFINITE_AT": str(POISON)}
    aborted(cli("train", "--config", cfg, env_extra={**poison, "TINYLLAMA_ABORT_AFTER": "rewind:1"}), "rewind:1")
    assert [e["skip"] for e in events(run, "rewind")] == [[POISON]]
    assert (run / "checkpoints/latest").read_text().strip() == "step-2"
    ok(cli("train", "--config", cfg, "--resume", env_extra=poison))
    assert step_losses(run) == step_losses(poisoned_reference)
    assert [e["step"] for e in events(run, "rewind")] == [POISON, POISON]  # the first one happened too
    last = json.loads((run / f"checkpoints/step-{STEPS}/trainer.json").read_text())
    assert last["guard"]["skip"] == [POISON]
    assert checkpoint_bytes(run / f"checkpoints/step-{STEPS}") == checkpoint_bytes(
        poisoned_reference / f"checkpoints/step-{STEPS}")


# ---- export and import-hf ---------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_aborted_before_its_rename_leaves_the_previous_export(reference, tmp_path):
    """`export --force` over a previous export, killed with every file written: the previous
    export is intact; a rerun writes what an uninterrupted export writes and removes the killed
    one's temp dir (its own), nothing else beside it."""
    out = tmp_path / "hf"
    ok(cli("export", reference / "checkpoints/step-4", "--out", out))
    first = tree(out)
    (tmp_path / ".hf.notmine.tmp").mkdir()  # a user's dir that looks like ours: left alone
    (tmp_path / ".hf.notmine.tmp/notes.txt").write_text("mine")
    r = cli("export", reference, "--out", out, "--force", env_extra={"TINYLLAMA_ABORT_AFTER": "export-files:1"})
    aborted(r, "export-files:1")
    assert tree(out) == first
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.") and p.name != ".hf.notmine.tmp"]
    assert len(left) == 1 and left[0].endswith(".tmp")  # the killed export's temp dir
    ok(cli("export", reference, "--out", out, "--force"))
    clean = tmp_path / "clean"
    ok(cli("export", reference, "--out", clean))
    assert tree(out) == tree(clean) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.notmine.tmp", "clean", "hf"]
    assert (tmp_path / ".hf.notmine.tmp/notes.txt").read_text() == "mine"


def test_import_aborted_before_its_commit_reruns_to_the_same_bytes(reference, mix, tmp_path):
    """`import-hf` killed with the checkpoint's files written, before its rename: nothing is
    committed (no checkpoint for --resume to find); a rerun into the same dir imports what an
    uninterrupted import writes, and training resumes from it."""
    from tinyllama.train.checkpoint import committed_steps

    hf = tmp_path / "hf"
    ok(cli("export", reference / "checkpoints/step-4", "--out", hf))
    cfg = train_config(tmp_path / "cfg", mix)
    run = tmp_path / "cfg/run"
    r = cli("import-hf", hf, "--out", run, "--step", 4, "--config", cfg,
            env_extra={"TINYLLAMA_ABORT_AFTER": "import-files:1"})
    aborted(r, "import-files:1")
    assert committed_steps(run / "checkpoints") == [] and (run / "checkpoints/step-4.tmp/checksums.json").is_file()
    ok(cli("import-hf", hf, "--out", run, "--step", 4, "--config", cfg))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-4"]
    clean_cfg = train_config(tmp_path / "clean", mix)
    ok(cli("import-hf", hf, "--out", tmp_path / "clean/run", "--step", 4, "--config", clean_cfg))
    assert checkpoint_bytes(run / "checkpoints/step-4") == checkpoint_bytes(tmp_path / "clean/run/checkpoints/step-4")
    ok(cli("train", "--config", cfg, "--resume"))
    assert sorted(step_losses(run)) == [5, 6]
