"""A family: one trunk trained once, branches that continue it exactly (issue 26).

One spec declares the corpora once, the trunk's `[[stages]]` and each branch's
`[[branches.NAME.stages]]`; `mix build` builds each corpus once and locks a schedule per branch;
a branch's batches equal the trunk's before the branch point and every corpus continues from
the trunk's cursor after it; a branch run started from the trunk's checkpoint trains, step for
step, like the branch trained straight through.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPORA, TOKENIZER_ZST, tree_bytes

ROOT = Path(__file__).resolve().parents[2]

HEADER = f"""
name = "fam"
seed = 11
seq_len = 32
tokenizer = "{TOKENIZER_ZST}"
shard_tokens = "50K"
"""

CORPORA_TOML = {
    "slimpajama": f"""
[corpora.slimpajama]
paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
holdout_docs = 5
""",
    "skypile": f"""
[corpora.skypile]
paths = ["{CORPORA}/skypile/*.jsonl"]
holdout_docs = 5
""",
    "starcoder": f"""
[corpora.starcoder]
paths = ["{CORPORA}/starcoderdata/**/*.parquet"]
text = "content"
holdout_docs = 5
""",
}

# The trunk: 8 steps of 8 sequences of 32 tokens on SlimPajama alone.
TRUNK = """
[[stages]]
name = "basic"
tokens = 2048
batch_tokens = 256
weights = { slimpajama = 1.0 }
"""

# chinese: a ramp to 50/50 over 2 steps, 4 steps in all, then a 4x-batch cooldown step (13 steps);
# code: 8 steps at 70/30 (16 steps: the longest, so chinese is the shorter branch).
CHINESE = """
name = "continual"
tokens = 1024
batch_tokens = 256
weights = { slimpajama = 0.5, skypile = 0.5 }
ramp_tokens = 512
"""
CHINESE_COOLDOWN = """
name = "cooldown"
tokens = 1024
batch_tokens = 1024
weights = { slimpajama = 0.5, skypile = 0.5 }
"""
CODE = """
name = "continual"
tokens = 2048
batch_tokens = 256
weights = { slimpajama = 0.7, starcoder = 0.3 }
"""


def family_spec(dir: Path, header: str = HEADER) -> Path:
    body = "".join(CORPORA_TOML.values()) + TRUNK
    body += "\n[[branches.chinese.stages]]" + CHINESE + "\n[[branches.chinese.stages]]" + CHINESE_COOLDOWN
    body += "\n[[branches.code.stages]]" + CODE
    dir.mkdir(parents=True, exist_ok=True)
    spec = dir / "family.toml"
    spec.write_text(textwrap.dedent(header) + body)
    return spec


def chinese_spec(dir: Path) -> Path:
    """The chinese variant alone, as a plain spec listing skypile first (the issue's case)."""
    body = CORPORA_TOML["skypile"] + CORPORA_TOML["slimpajama"] + TRUNK
    body += "\n[[stages]]" + CHINESE + "\n[[stages]]" + CHINESE_COOLDOWN
    dir.mkdir(parents=True, exist_ok=True)
    spec = dir / "chinese.toml"
    spec.write_text(textwrap.dedent(HEADER) + body)
    return spec


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("family")
    build_mix(family_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


@pytest.fixture(scope="module")
def chinese(tmp_path_factory) -> Path:
    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("chinese")
    build_mix(chinese_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


# ---- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("branches, key", [
    ('[[branches.a.stages]]\nname = "basic"\ntokens = 512\nbatch_tokens = 256\nweights = { slimpajama = 1.0 }\n',
     "branches.a.stages[0].name"),
    ('[[branches.a.stages]]\ntokens = 512\nbatch_tokens = 256\nweights = { nosuch = 1.0 }\n',
     "branches.a.stages[0].weights.nosuch"),
    ('[branches.a]\nstage = []\n', "branches.a.stage"),
    ('[branches."a b"]\nstages = []\n', "branches.a b"),
    ('[branches.a]\nstages = []\n', "branches.a.stages"),
])
def test_family_spec_errors_name_the_key(tmp_path, branches, key):
    from tinyllama.data.spec import load_spec
    from tinyllama.errors import SpecError

    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent(HEADER) + CORPORA_TOML["slimpajama"] + TRUNK + branches)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "\n" not in str(e.value) and str(spec) in str(e.value)
    assert f"'{key}" in str(e.value), str(e.value)


def test_a_branch_may_ramp_from_the_trunk(tmp_path):
    from tinyllama.data.spec import load_spec

    spec = load_spec(family_spec(tmp_path))
    assert list(spec.branches) == ["chinese", "code"]
    assert spec.branches["chinese"][0].ramp_tokens == 512
    cfg = spec.build_config(tmp_path / "out")
    assert [b["name"] for b in cfg["branches"]] == ["chinese", "code"]
    # a plain spec says nothing of branches (its identity is what it always was)
    assert "branches" not in load_spec(chinese_spec(tmp_path / "c")).build_config(tmp_path / "o")


# ---- the built family -------------------------------------------------------------------------


def test_family_mix_locks_the_trunk_and_each_branch(family, chinese):
    import tinyllama
    from tinyllama.errors import SpecError

    lock = json.loads((family / "mix.json").read_text())
    assert lock["branch_step"] == 8
    assert sorted(lock["branches"]) == ["chinese", "code"]
    for name in ("chinese", "code"):
        rel = lock["branches"][name]["schedule"]
        assert rel in lock["sha256"]  # pinned like every metadata file
    trunk = tinyllama.Mix(family)
    assert trunk.branches() == ["chinese", "code"] and trunk.branch_step() == 8
    assert trunk.num_steps() == 8
    assert tinyllama.Mix(family, branch="chinese").num_steps() == 13
    assert tinyllama.Mix(family, branch="code").num_steps() == 16
    plain = tinyllama.Mix(chinese)
    assert plain.branches() == [] and plain.branch_step() is None and plain.num_steps() == 13
    with pytest.raises(SpecError, match="no such branch .* it has chinese, code"):
        tinyllama.Mix(family, branch="math")
    with pytest.raises(SpecError, match="plain mix, not a family"):
        tinyllama.Mix(chinese, branch="chinese")
    info = tinyllama.Mix(family, branch="code").inspect()
    assert info["branch"] == "code" and info["branch_step"] == 8
    assert [s["name"] for s in info["stages"]] == ["basic", "continual"]
    assert info["stages"][1]["first_step"] == 8
    assert info["corpora"]["starcoder"]["epochs"] >= 1 and info["corpora"]["skypile"]["epochs"] == 0
    assert tinyllama.Mix(family).inspect()["corpora"]["starcoder"]["epochs"] == 0


def test_each_corpus_is_built_once_as_a_plain_build_makes_it(family, chinese):
    # The family's corpora are byte for byte what a single-variant build makes of them.
    for corpus in ("slimpajama", "skypile"):
        fam = tree_bytes(family / "corpora" / corpus)
        one = tree_bytes(chinese / "corpora" / corpus)
        assert fam == one, corpus
    assert sorted(p.name for p in (family / "corpora").iterdir()) == ["skypile", "slimpajama", "starcoder"]


def test_the_distributed_stages_build_the_same_family(family, tmp_path):
    # What a Ray worker runs (test_ray_build's stages by hand, two plans standing for two
    # processes): the family's bytes, branch schedules included.
    from test_ray_build import _stages_by_hand

    _stages_by_hand(family_spec(tmp_path / "spec"), tmp_path / "mix", 2)
    got = tree_bytes(tmp_path / "mix")
    assert got == tree_bytes(family) and "branches/chinese/schedule.json" in got


def _named(mix, step):
    return [(c, e, w) for c, e, w in mix.samples(step)]


def test_branches_equal_the_trunk_then_continue_every_cursor(family):
    import tinyllama

    trunk = tinyllama.Mix(family)
    for name in trunk.branches():
        branch = tinyllama.Mix(family, branch=name)
        drawn: Counter = Counter()
        for step in range(branch.num_steps()):
            if step < trunk.branch_step():
                t_tokens, t_corpora = trunk.batch(step)
                b_tokens, b_corpora = branch.batch(step)
                assert t_corpora == b_corpora and np.array_equal(t_tokens, b_tokens), (name, step)
            drawn.update(_named(branch, step))
        # no window twice within an epoch of a corpus, across trunk and branch
        assert max(drawn.values()) == 1, (name, [k for k, v in drawn.items() if v > 1][:5])


def test_streams_are_keyed_by_corpus_name_not_position(family, chinese):
    # The case: a chinese mix listing skypile first gives the trunk's windows at every
    # trunk step, and the family's chinese branch's windows at every step after it.
    import tinyllama

    fam, plain = tinyllama.Mix(family, branch="chinese"), tinyllama.Mix(chinese)
    assert plain.corpora[0] == "skypile" and fam.corpora[0] == "slimpajama"
    assert fam.num_steps() == plain.num_steps()
    for step in range(fam.num_steps()):
        assert Counter(_named(fam, step)) == Counter(_named(plain, step)), step
        if step < 8:  # SlimPajama alone: the very same batch
            assert np.array_equal(fam.batch(step)[0], plain.batch(step)[0]), step


def test_cli_takes_a_branch(family, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tinyllama.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, check=False)

    r = cli("mix", "inspect", family)
    assert r.returncode == 0, r.stderr
    assert "branch point at step 8" in r.stdout and "-> chinese" in r.stdout and "-> code" in r.stdout
    r = cli("mix", "inspect", family, "--json", "--branch", "chinese")
    assert json.loads(r.stdout)["num_steps"] == 13
    r = cli("mix", "sample", family, "--step", "12", "--branch", "chinese", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["corpus"]) == 32
    r = cli("mix", "trace", family, "--step", "9", "--branch", "code", "--json")
    assert r.returncode == 0 and {f["corpus"] for f in json.loads(r.stdout)["fragments"]} <= {"slimpajama",
                                                                                               "starcoder"}
    r = cli("mix", "sample", family, "--step", "12")  # the trunk has 8 steps
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "0..7" in r.stderr
    r = cli("mix", "inspect", family, "--branch", "nope")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "it has chinese, code" in r.stderr
    r = cli("mix", "plot", family, "-o", tmp_path / "fam.png")
    assert r.returncode == 0 and (tmp_path / "fam.png").stat().st_size > 10_000


# ---- the lr schedule of a family --------------------------------------------------------------


def _cfg(schedule="cosine", **optim):
    from tinyllama.train.config import config_from_dict

    return config_from_dict({"mix": "m", "out": "o", "model": "tiny",
                             "optim": {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 3, "schedule": schedule,
                                       "decay_fraction": 0.25, **optim}})


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_family_lr_is_one_schedule(schedule):
    import math

    from tinyllama.train.optim import lr_at

    cfg = _cfg(schedule)
    point, lengths = 40, {"long": 100, "short": 70}
    horizon = max(lengths.values())
    trunk = [lr_at(s, cfg, horizon, (point, None)) for s in range(point)]
    for own in lengths.values():
        lrs = [lr_at(s, cfg, horizon, (point, own)) for s in range(own)]
        assert lrs[:point] == trunk  # the trunk's lr is every branch's
        assert lrs[-1] == pytest.approx(0.1)  # every branch ends at min_lr
        assert all(a >= b - 1e-12 for a, b in zip(lrs[3:], lrs[4:]))  # never rises after warmup
    if schedule == "cosine":
        # the longest branch is the plain cosine over its length, computed here by hand
        for s in range(3, 100):
            want = 0.1 + 0.45 * (1 + math.cos(math.pi * (s - 3) / (100 - 1 - 3)))
            assert lr_at(s, cfg, horizon, (point, 100)) == pytest.approx(want)
        # the short branch starts from the trunk's lr at the branch point: continuous
        assert lr_at(point, cfg, horizon, (point, 70)) == pytest.approx(lr_at(point, cfg, horizon, (point, 100)))
    else:
        assert trunk[3:] == [1.0] * (point - 3)  # stable through the trunk


def test_plain_schedules_end_at_min_lr():
    from tinyllama.train.optim import lr_at

    for schedule in ("cosine", "wsd"):
        cfg = _cfg(schedule)
        assert lr_at(11, cfg, 12) == pytest.approx(0.1), schedule
        assert lr_at(10, cfg, 12) > 0.1


# ---- training: the trunk once, then branches ---------------------------------------------------

TRAIN = """
mix = "{mix}"
out = "{out}"
micro_batch = 4
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
log_every = 1
save_every = 4
keep_last = 5
eval_every = 4
precision = "fp32"
compile = false
"""


def train_config(dir: Path, mix: Path, out: Path) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    p = dir / "train.toml"
    p.write_text(TRAIN.format(mix=mix, out=out))
    return p


def run(config: Path, *overrides: str, resume: bool = False) -> list[dict]:
    import torch

    from tinyllama.train import train
    from tinyllama.train.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(config, list(overrides))
    train(cfg, resume=resume)
    return metrics(Path(cfg.out))


def metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def by_step(records: list[dict]) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["lr"]) for r in records}


def dir_state(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def trained(family, tmp_path_factory):
    """The trunk trained once, and the chinese branch trained straight through from step 0."""
    root = tmp_path_factory.mktemp("runs")
    trunk = run(train_config(root / "trunk", family, root / "trunk/run"))
    straight = run(train_config(root / "straight", family, root / "straight/run"), 'branch="chinese"')
    return root, trunk, straight


def test_the_trunk_ends_at_the_branch_point_with_a_checkpoint(trained):
    root, trunk, _ = trained
    assert [r["step"] for r in trunk] == list(range(1, 9))
    ckpts = root / "trunk/run/checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-8"
    trainer = json.loads((ckpts / "step-8/trainer.json").read_text())
    assert trainer["step"] == 8 and trainer["branch"] is None


def test_trunk_then_branch_equals_the_branch_straight_through(trained, family):
    root, trunk, straight = trained
    before = dir_state(root / "trunk/run")
    cfg = train_config(root / "branch", family, root / "branch/run")
    branch = run(cfg, 'branch="chinese"', f'branch_from="{root / "trunk/run"}"')
    assert dir_state(root / "trunk/run") == before  # the trunk's dir is only read
    assert [r["step"] for r in branch] == list(range(9, 14))
    # step for step: the same losses and lr, exactly (fp32, one process)
    assert by_step(trunk + branch) == by_step(straight)
    assert straight[-1]["lr"] == pytest.approx(1e-3)  # the shorter branch ends at min_lr
    trainer = json.loads((root / "branch/run/checkpoints/step-13/trainer.json").read_text())
    assert trainer["branch"] == "chinese" and trainer["branched_from"]["step"] == 8
    # --resume of a branch continues the branch (nothing left to do: it is complete)
    run(cfg, 'branch="chinese"', f'branch_from="{root / "trunk/run"}"', resume=True)
    assert dir_state(root / "trunk/run") == before


def test_branch_refusals_are_one_line_naming_both_sides(trained, family, tmp_path, tmp_path_factory):
    from tinyllama.data.build import build_mix
    from tinyllama.errors import TinyllamaError

    root, _, _ = trained
    trunk = root / "trunk/run"
    before = dir_state(trunk)
    cfg = train_config(tmp_path / "b", family, tmp_path / "b/run")

    def refused(*overrides, config=cfg):
        with pytest.raises(TinyllamaError) as e:
            run(config, *overrides)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    # another family: the same spec with another seed is another mix
    other = tmp_path_factory.mktemp("other")
    build_mix(family_spec(other, HEADER.replace("seed = 11", "seed = 12")), other / "mix", 2, progress=False)
    msg = refused('branch="chinese"', f'branch_from="{trunk}"', config=train_config(tmp_path / "o", other / "mix",
                                                                                     tmp_path / "o/run"))
    assert "another family" in msg and str(trunk) in msg and "fam" in msg
    # another model shape
    msg = refused('branch="chinese"', f'branch_from="{trunk}"', "model.n_embd=32")
    assert "n_embd" in msg and str(trunk) in msg
    # a step after the branch point (the straight-through run's step 12)
    msg = refused('branch="chinese"', f'branch_from="{root / "straight/run/checkpoints/step-12"}"')
    assert "after the branch point (step 8)" in msg and "step-12" in msg
    # a checkpoint of another branch
    straight_code = tmp_path / "sc"
    run(train_config(straight_code, family, straight_code / "run"), 'branch="code"', "run.stop_after=4")
    msg = refused('branch="chinese"', f'branch_from="{straight_code / "run"}"')
    assert "branch 'code'" in msg
    # keys that do not fit the mix
    assert "key 'branch_from'" in refused(f'branch_from="{trunk}"')
    assert "key 'run.max_steps'" in refused("run.max_steps=5")
    assert "key 'branch'" in refused('branch="math"')
    assert dir_state(trunk) == before


def test_a_branch_killed_in_its_first_save_resumes_to_the_same_losses(trained, family, tmp_path):
    root, _, straight = trained
    trunk = root / "trunk/run"
    before = dir_state(trunk)
    cfg = train_config(tmp_path, family, tmp_path / "run")
    args = [sys.executable, "-m", "tinyllama.cli", "train", "--config", str(cfg), "--set", 'branch="chinese"',
            "--set", f'branch_from="{trunk}"']
    env = {**os.environ, "TINYLLAMA_ABORT_AFTER": "save-files:1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode != 0 and "aborting after save-files #1" in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "run/checkpoints/step-12.tmp").is_dir()  # killed in the middle of its first save
    assert not (tmp_path / "run/checkpoints/latest").exists()
    assert dir_state(trunk) == before
    env.pop("TINYLLAMA_ABORT_AFTER")
    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    got = by_step(metrics(tmp_path / "run"))
    want = by_step(straight)
    assert got == {s: want[s] for s in got} and max(got) == 13
    assert dir_state(trunk) == before


def test_import_hf_continues_a_branch_or_stands_as_the_trunk(trained, family, tmp_path):
    # TinyLlama's own 1.5T checkpoint as the trunk: here the trunk's step 8, exported.
    from tinyllama.hf import export, import_hf

    root, _, straight = trained
    hf = export(root / "trunk/run/checkpoints/step-8", tmp_path / "hf", tokenizer=family / "tokenizer.json")
    # 1. into the branch's own run dir at its continual stage, then --resume
    cfg = train_config(tmp_path / "b", family, tmp_path / "b/run")
    import_hf(hf, tmp_path / "b/run", config=cfg, overrides=['branch="chinese"'], stage="continual")
    trainer = json.loads((tmp_path / "b/run/checkpoints/step-8/trainer.json").read_text())
    assert trainer["step"] == 8 and trainer["branch"] == "chinese"
    assert trainer["lr"] == pytest.approx(by_step(straight)[9][1])  # the family's lr of step 8 (record 9)
    got = by_step(run(cfg, 'branch="chinese"', resume=True))
    assert sorted(got) == list(range(9, 14))
    assert {s: lr for s, (_, lr) in got.items()} == {s: by_step(straight)[s][1] for s in got}
    # 2. as the trunk's run dir, which a branch then starts from
    trunk_cfg = train_config(tmp_path / "t", family, tmp_path / "t/run")
    import_hf(hf, tmp_path / "t/run", config=trunk_cfg, step=8)
    got = by_step(run(train_config(tmp_path / "c", family, tmp_path / "c/run"), 'branch="code"',
                      f'branch_from="{tmp_path / "t/run"}"'))
    assert sorted(got) == list(range(9, 17))


def test_runs_shows_the_tree_and_plots_it(trained, family, tmp_path):
    root, trunk, _ = trained
    for name in ("code", "chinese"):
        run(train_config(tmp_path / name, family, tmp_path / name / "run"), f'branch="{name}"',
            f'branch_from="{root / "trunk/run"}"', "run.stop_after=12")
    dirs = [tmp_path / "chinese/run", root / "trunk/run", tmp_path / "code/run"]
    from tinyllama.train.runs import family_tree

    tree = family_tree(dirs)
    assert [(depth, info.branch) for depth, info in tree] == [(0, None), (1, "chinese"), (1, "code")]
    top = tree[0][1]
    assert top.step == 8 and top.latest == "step-8" and top.loss == trunk[-1]["loss"]
    assert set(top.val) == {"slimpajama", "skypile", "starcoder"} and top.val_step == 8
    assert tree[1][1].branch_step == 8 and tree[1][1].step == 12
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "runs", *map(str, dirs), "--plot",
                        str(tmp_path / "runs.png")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[2].startswith("run ") and " trunk " in lines[2] and "└─ run" in lines[3] and "chinese @ 8" in lines[3]
    assert "val skypile" in lines[0] and (tmp_path / "runs.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_branch_on_two_ranks_from_a_trunk_trained_on_one(trained, family, tmp_path):
    root, _, straight = trained
    cfg = train_config(tmp_path, family, tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", "-m", "tinyllama.train", str(cfg), "--set", 'branch="chinese"',
           "--set", f'branch_from="{root / "trunk/run"}"']
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got, want = by_step(metrics(tmp_path / "run")), by_step(straight)
    assert sorted(got) == list(range(9, 14))
    for step, (loss, lr) in got.items():
        assert loss == pytest.approx(want[step][0], rel=1e-4, abs=1e-4), step
        assert lr == pytest.approx(want[step][1]), step
