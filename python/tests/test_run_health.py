"""Run health (issue 14): in-loop validation equals `tinyllama eval`, the loss-spike guard
rewinds and skips reproducibly, annealing branches continue the parent's stream. CPU, tiny
models, the real data slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_hf import build_tiny_mix, mix_source, train_config
from test_train import CONFIG, TokenStreamSource, load_source, losses, read_metrics, run_inproc, streams, write_config

from tinyllama.errors import CheckpointError, SpecError, TrainingError

__all__ = ["streams"]  # the fixture, re-exported for pytest

POISON = 9  # the planted spike: the batch of schedule step 9 is random tokens
GUARD = ["run.save_every=4", "run.guard.window=3", "run.guard.spike_factor=1.15"]


def steps_of(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "loss" in m]


def tensorboard_losses(run: Path) -> dict[int, float]:
    """The `loss` scalars of a run's TensorBoard events as TensorBoard reads them (step ->
    value); a step logged twice without a purge in between is an error here."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    scalars = acc.Scalars("loss")
    steps = [e.step for e in scalars]
    assert len(steps) == len(set(steps)), f"TensorBoard holds steps twice: {steps}"
    return {e.step: e.value for e in scalars}


def events(metrics: list[dict], kind: str) -> list[dict]:
    return [m for m in metrics if m.get("event") == kind]


class PoisonedSource(TokenStreamSource):
    """The stand-in stream with one garbage batch (uniform random token ids) at `POISON`."""

    def batch(self, step: int, rank: int = 0, world: int = 1):
        tokens, corpora = super().batch(step, rank, world)
        if step == POISON:
            tokens = np.random.default_rng(step).integers(3, 32000, size=tokens.shape, dtype=np.int64)
        return tokens, corpora


def poisoned(path: Path) -> PoisonedSource:
    src = load_source(path)
    return PoisonedSource(dict(zip(src.names, src.streams)))


def run_poisoned(config: Path, streams: Path, overrides=(), resume=False) -> list[dict]:
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    cfg = load_config(config, overrides)
    train(cfg, resume=resume, source=poisoned(streams))
    return read_metrics(Path(cfg.out))


# ---- 1. in-loop validation ------------------------------------------------------------------


class HeldOutSource(TokenStreamSource):
    """The test_hf stand-in stream over a built mix's training documents, with that mix's
    held-out documents for validation."""

    def __init__(self, mix_dir: Path):
        import tinyllama

        src = mix_source(mix_dir)
        super().__init__(dict(zip(src.names, src.streams)), seq_len=src.seq_len)
        self.mix = tinyllama.Mix(mix_dir)
        self.corpora, self.lock = self.mix.corpora, self.mix.lock

    def documents(self, corpus: str, holdout: bool = False):
        return self.mix.documents(corpus, holdout=holdout)


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return build_tiny_mix(tmp_path_factory.mktemp("health-mix"))


def test_validation_equals_tinyllama_eval_of_the_checkpoint(mix, tmp_path):
    from tinyllama.eval.perplexity import eval_main
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(train_config(mix, out, steps=3, save_every=2, keep_last=3, eval_every=2), source=HeldOutSource(mix))
    metrics = read_metrics(out)
    val = [m for m in metrics if "val/loss" in m]
    assert [m["step"] for m in val] == [2, 3]  # every 2 steps and at the last
    assert len(steps_of(metrics)) == 3  # step records unchanged, validation lines apart
    for rec in val:
        want = json.loads(eval_main(out / f"checkpoints/step-{rec['step']}", mix, as_json=True))
        assert set(rec) == {"step", "val/loss", *(f"val/loss/{c}" for c in want["corpora"])}
        for c, r in want["corpora"].items():
            assert rec[f"val/loss/{c}"] == pytest.approx(r["nll"], rel=1e-5, abs=0)
        assert rec["val/loss"] == pytest.approx(want["all"]["nll"], rel=1e-5, abs=0)
    assert val[0]["val/loss"] != pytest.approx(val[1]["val/loss"], rel=1e-6)  # the model moved


def test_validation_under_bf16_runs_in_the_training_precision(mix, tmp_path):
    """precision = "bf16" (CPU autocast): the in-loop validation of step s equals the checkpoint
    of step s scored by `evaluate` (`tinyllama eval`'s function) under the same autocast, and
    differs from the fp32 `tinyllama eval` by bf16 rounding only."""
    from tinyllama import load_model
    from tinyllama.eval.perplexity import eval_main, evaluate
    from tinyllama.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = train_config(mix, out, steps=2, save_every=2, eval_every=2, precision="bf16")
    train(cfg, source=HeldOutSource(mix))
    (rec,) = [m for m in read_metrics(out) if "val/loss" in m]
    model = load_model(out / "checkpoints/step-2")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = evaluate(model, tinyllama_mix(mix), batch_size=cfg.micro_batch)
    fp32 = json.loads(eval_main(out / "checkpoints/step-2", mix, as_json=True))
    for c, r in bf16["corpora"].items():
        assert rec[f"val/loss/{c}"] == pytest.approx(r["nll"], rel=1e-5, abs=0)
        assert rec[f"val/loss/{c}"] == pytest.approx(fp32["corpora"][c]["nll"], rel=2e-2)
        assert rec[f"val/loss/{c}"] != pytest.approx(fp32["corpora"][c]["nll"], rel=1e-5, abs=0)
    assert rec["val/loss"] == pytest.approx(bf16["all"]["nll"], rel=1e-5, abs=0)


def tinyllama_mix(path: Path):
    import tinyllama

    return tinyllama.Mix(path)


def test_validation_sharded_over_ranks_sums_to_one_rank(mix):
    """Rank r of W scores its share (padded to the same number of forwards); the sums of all
    ranks' shares are one process' numbers."""
    from test_hf import MODEL

    from tinyllama.eval import perplexity
    from tinyllama.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL), "cpu", seed=None)
    model.init_weights(1)
    whole = perplexity.evaluate(model, mix, batch_size=4, max_docs=3)
    forwards = []
    real = perplexity._batch_nll

    def counting(*a):
        forwards.append(1)
        return real(*a)

    parts = []
    perplexity._batch_nll = counting
    try:
        for rank in range(3):
            forwards.clear()
            parts.append(perplexity.evaluate(model, mix, batch_size=4, max_docs=3, rank=rank, world=3,
                                             all_reduce_sum=lambda t: t))  # no reduction: this rank's share
            parts[-1]["forwards"] = len(forwards)
    finally:
        perplexity._batch_nll = real
    assert len({p["forwards"] for p in parts}) == 1  # the same number of forwards on every rank
    for c, r in whole["corpora"].items():
        assert sum(p["corpora"][c]["tokens"] for p in parts) == r["tokens"]
        nll = sum(p["corpora"][c]["nll"] * p["corpora"][c]["tokens"] for p in parts if p["corpora"][c]["tokens"])
        assert nll / r["tokens"] == pytest.approx(r["nll"], rel=1e-9)


def test_eval_every_needs_held_out_documents(mix, tmp_path):
    from tinyllama.train import train

    with pytest.raises(SpecError, match="run.eval_every"):
        train(train_config(mix, tmp_path / "run", steps=2, eval_every=1), source=mix_source(mix))
    assert not (tmp_path / "run/checkpoints").exists()


# ---- 2. the guard ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(streams, tmp_path_factory) -> Path:
    """12 steps with a poisoned batch at step 9, checkpoints every 4 steps."""
    cfg = write_config(tmp_path_factory.mktemp("guarded"))
    run_poisoned(cfg, streams, GUARD)
    return cfg.parent / "run"


def test_a_planted_spike_is_rewound_and_skipped(guarded, streams, tmp_path):
    metrics = read_metrics(guarded)
    (rw,) = events(metrics, "rewind")
    assert rw["step"] == POISON and rw["to"] == "step-8" and rw["skip"] == [POISON] and "median" in rw["why"]
    assert [e["step"] for e in events(metrics, "skip")] == [POISON]
    steps = steps_of(metrics)
    # one record per applied step, none duplicated by the replay; the skipped step has its event
    assert [m["step"] for m in steps] == [s for s in range(1, 13) if s != POISON + 1]
    assert max(m["loss"] for m in steps) < rw["bad_loss"]  # the spike was never applied nor logged
    # TensorBoard tells the same story: the rewind purged the replayed steps' first run.
    assert tensorboard_losses(guarded) == pytest.approx(losses(steps), rel=1e-6)
    trainer = json.loads((guarded / "checkpoints/step-12/trainer.json").read_text())
    assert trainer["guard"]["skip"] == [POISON]
    # Without the guard the same data makes the spike a logged, applied step.
    cfg = write_config(tmp_path / "off")
    unguarded = steps_of(run_poisoned(cfg, streams, GUARD + ["run.guard.enabled=false"]))
    assert unguarded[POISON]["loss"] == rw["bad_loss"]
    # Steps before the rewound one are the same either way; the skip changes what follows.
    assert losses(unguarded)[POISON] == losses(steps)[POISON]
    assert losses(unguarded)[12] != losses(steps)[12]


@pytest.mark.slow
def test_two_ranks_rewind_and_skip_like_one(guarded, streams, tmp_path):
    """torchrun, 2 FSDP ranks (gloo): the guard's verdict is the all-reduced loss, so both
    ranks rewind together to the same checkpoint, skip the same step, and end where the
    1-process run ends (up to float reduction order); the skip list is in the checkpoint."""
    from test_train import run_torchrun

    cfg = write_config(tmp_path)
    two = run_torchrun(2, cfg, streams, GUARD, poisoned=True)
    one = read_metrics(guarded)
    assert [(e["step"], e["to"], e["skip"]) for e in events(two, "rewind")] == [
        (e["step"], e["to"], e["skip"]) for e in events(one, "rewind")]
    assert [e["step"] for e in events(two, "skip")] == [POISON]
    assert losses(steps_of(two)) == pytest.approx(losses(steps_of(one)), rel=1e-3)
    trainer = json.loads((tmp_path / "run/checkpoints/step-12/trainer.json").read_text())
    assert trainer["guard"]["skip"] == [POISON] and trainer["world"] == 2


def test_resumed_guarded_run_repeats_the_uninterrupted_one(guarded, streams, tmp_path):
    cfg = write_config(tmp_path)
    first = run_poisoned(cfg, streams, GUARD + ["run.stop_after=11"])
    assert json.loads((tmp_path / "run/checkpoints/step-11/trainer.json").read_text())["guard"]["skip"] == [POISON]
    resumed = run_poisoned(cfg, streams, GUARD, resume=True)
    assert losses(steps_of(resumed)) == losses(steps_of(read_metrics(guarded)))  # bit-identical
    assert len(events(first, "rewind")) == 1 and len(events(resumed, "rewind")) == 1  # not rewound again
    assert tensorboard_losses(tmp_path / "run") == pytest.approx(losses(steps_of(resumed)), rel=1e-6)
    # A repeat from the checkpoint before the spike finds and skips the same step.
    again = tmp_path / "again"
    cfg2 = write_config(again)
    run_poisoned(cfg2, streams, GUARD + ["run.stop_after=8"])
    repeated = run_poisoned(cfg2, streams, GUARD, resume=True)
    assert losses(steps_of(repeated)) == losses(steps_of(read_metrics(guarded)))
    assert [e["step"] for e in events(repeated, "rewind")] == [POISON]


def test_guard_config_errors_name_the_key(tmp_path):
    from tinyllama.train.config import load_config

    path = write_config(tmp_path, CONFIG + "[run.guard]\nspike_factr = 2.0\n")
    with pytest.raises(SpecError, match="run.guard.spike_factr.*spike_factor"):
        load_config(path)
    with pytest.raises(SpecError, match="run.guard.max_rewinds"):
        load_config(write_config(tmp_path), ["run.guard.max_rewinds=0"])


# ---- 3. annealing branches ------------------------------------------------------------------


@pytest.fixture(scope="module")
def parent(streams, tmp_path_factory) -> Path:
    cfg = write_config(tmp_path_factory.mktemp("parent"))
    run_inproc(cfg, streams, ["run.save_every=4", "run.keep_last=5"])
    return cfg.parent / "run"


def test_anneal_branch_continues_the_stream_and_decays_the_lr(parent, streams, tmp_path):
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    k, n = 4, 4
    cfg = load_config(write_config(tmp_path, CONFIG.replace('out = "run"', 'out = "branch"')))
    train(cfg, source=load_source(streams), anneal_from=str(parent / f"checkpoints/step-{k}"), anneal_steps=n)
    branch = tmp_path / "branch"
    got = steps_of(read_metrics(branch))
    base = {m["step"]: m for m in read_metrics(parent)}
    assert [m["step"] for m in got] == list(range(k + 1, k + n + 1))  # ends after N steps
    # Step k of the branch: the parent's weights at k and the parent's batch at k -> its loss.
    assert got[0]["loss"] == base[k + 1]["loss"]
    assert got[0]["loss/skypile"] == base[k + 1]["loss/skypile"]
    assert got[0]["tokens"] == base[k + 1]["tokens"]
    parent_lr = json.loads((parent / f"checkpoints/step-{k}/trainer.json").read_text())["lr"]
    # Computed by hand, not by the code under test: the parent's step 3 (its last before the
    # checkpoint) is the end of its 3-step warmup, lr 1e-2; the branch's i-th step (i = 1..4)
    # decays to min_lr 1e-3 in the default 1-sqrt shape: 1e-3 + 9e-3 * (1 - sqrt(i / 4)).
    assert parent_lr == pytest.approx(1e-2, rel=1e-12)
    assert cfg.optim.min_lr == 1e-3 and cfg.optim.decay_shape == "1-sqrt"
    assert [m["lr"] for m in got] == pytest.approx([0.0055, 0.003636038969, 0.002205771366, 0.001], rel=1e-9)
    assert got[-1]["lr"] == cfg.optim.min_lr and got[0]["lr"] < parent_lr
    assert got[1]["loss"] != base[k + 2]["loss"]  # a different lr: a different second step
    origin = json.loads((branch / "train-config.json").read_text())["annealed_from"]
    assert origin["step"] == k and Path(origin["path"]) == (parent / f"checkpoints/step-{k}").resolve()
    assert json.loads((branch / f"checkpoints/step-{k + n}/trainer.json").read_text())["annealed_from"] == origin

    # --resume of a branch continues the anneal (same losses as the uninterrupted branch).
    cfg2 = load_config(write_config(tmp_path / "b2", CONFIG), ["run.stop_after=6"])
    train(cfg2, source=load_source(streams), anneal_from=str(parent / f"checkpoints/step-{k}"), anneal_steps=n)
    cfg2 = load_config(write_config(tmp_path / "b2", CONFIG))
    train(cfg2, resume=True, source=load_source(streams))
    assert losses(steps_of(read_metrics(tmp_path / "b2/run"))) == losses(got)
    assert [m["lr"] for m in steps_of(read_metrics(tmp_path / "b2/run"))] == [m["lr"] for m in got]


def test_anneal_refuses_a_run_dir_with_checkpoints_and_bad_steps(parent, streams, tmp_path):
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    cfg = load_config(parent.parent / "train.toml")
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(cfg, source=load_source(streams), anneal_from=str(parent / "checkpoints/step-4"), anneal_steps=2)
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(SpecError, match="--anneal-steps"):
        train(cfg, source=load_source(streams), anneal_from=str(parent / "checkpoints/step-4"), anneal_steps=0)
    with pytest.raises(SpecError, match="--anneal-steps 5000"):
        train(cfg, source=load_source(streams), anneal_from=str(parent / "checkpoints/step-4"), anneal_steps=5000)
    assert not (tmp_path / "run/checkpoints").exists()


def test_diverging_run_stops_after_max_rewinds(mix, tmp_path):
    """Guard on (the default): a run whose every step diverges rewinds, skips, and stops after
    run.guard.max_rewinds failed steps in a row, naming them; nothing non-finite is saved."""
    from tinyllama import load_model
    from tinyllama.train import train
    from tinyllama.train.checkpoint import committed_steps

    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = train_config(mix, out, steps=12, save_every=1, keep_last=2)
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.optim.grad_clip = 1e12, 1e11, 0, 0.0
    with pytest.raises(TrainingError, match=r"steps (\d+, ){3}\d+ failed in a row") as e:
        train(cfg, source=mix_source(mix))
    metrics = read_metrics(out)
    rewinds = events(metrics, "rewind")
    assert len(rewinds) == cfg.run.guard.max_rewinds
    assert f"steps {', '.join(str(r['step']) for r in rewinds)}" in str(e.value)
    for s in committed_steps(out / "checkpoints"):
        assert all(torch.isfinite(p).all() for p in load_model(out / f"checkpoints/step-{s}").parameters())


class TracedPoisonedSource(PoisonedSource):
    """The poisoned stand-in plus a `trace` (as a built `tinyllama.Mix` has) answering from a
    real mix, so the guard can name the documents of the batch it skipped."""

    def __init__(self, streams_path: Path, mix_dir: Path):
        import tinyllama

        src = load_source(streams_path)
        super().__init__(dict(zip(src.names, src.streams)))
        self.mix = tinyllama.Mix(mix_dir)

    def trace(self, step: int, rank: int = 0, world: int = 1):
        return self.mix.trace(step, rank, world)


def test_a_rewind_names_the_documents_of_the_skipped_batch(mix, streams, tmp_path, capsys):
    import tinyllama
    from tinyllama.train import train
    from tinyllama.train.config import load_config

    cfg = load_config(write_config(tmp_path), GUARD)
    train(cfg, source=TracedPoisonedSource(streams, mix))
    (rw,) = events(read_metrics(Path(cfg.out)), "rewind")
    want = tinyllama.Mix(mix).trace(POISON).select("corpus", "source", "row").unique(maintain_order=True).to_dicts()
    assert rw["documents"] == want and want
    err = capsys.readouterr().err
    assert f"step {POISON} skipped; its batch holds {len(want)} document fragments: " in err
    assert f"{want[0]['source']}:{want[0]['row']}" in err


# ---- 4. the guard on a real mix, through the Rust ring loader --------------------------------
#
# The stand-in sources above feed batches through `batch()`; a `tinyllama.Mix` feeds them through
# its ring loader, which a rewind leaves and reopens at the rewound step. The test hook
# TINYLLAMA_NONFINITE_AT=S (tinyllama/fault.py) makes the loss of schedule step S NaN.

REAL_POISON, REAL_STEPS, REAL_SAVE = 5, 8, 3


@pytest.fixture(scope="module")
def real_mix(tmp_path_factory) -> Path:
    """Two corpora over the slice, 32 windows of 129 tokens a step (so 2 ranks split it)."""
    from conftest import two_corpus_mix

    return two_corpus_mix(tmp_path_factory.mktemp("guard-mix"))


def real_config(mix: Path, out: Path, micro_batch: int = 16):
    from test_hf import MODEL

    from tinyllama.train.config import config_from_dict

    return config_from_dict({
        "mix": str(mix), "out": str(out), "micro_batch": micro_batch, "model": {**MODEL, "max_seq_len": 128},
        "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2},
        "run": {"max_steps": REAL_STEPS, "log_every": 1, "save_every": REAL_SAVE, "keep_last": 5,
                "precision": "fp32", "compile": False}})


def train_recorded(monkeypatch, cfg, resume: bool = False, poison: int | None = REAL_POISON) -> dict:
    """Train on the real mix (source=None: `tinyllama.Mix` through its ring loader) and record
    what every optimizer step was given: its tokens and the lr set on the optimizer, and where
    the loader was (re)opened."""
    import tinyllama
    from tinyllama.train import loop

    if poison is None:
        monkeypatch.delenv("TINYLLAMA_NONFINITE_AT", raising=False)
    else:
        monkeypatch.setenv("TINYLLAMA_NONFINITE_AT", str(poison))
    seen = {"tokens": [], "lr": [], "loaders": []}
    real_step, real_loader = loop.train_step, tinyllama.Mix.loader

    def step(model, opt, tokens, *a, **kw):
        # the loader's tokens are a torch view of its ring buffer, reused once dropped: copied
        seen["tokens"].append(tokens.numpy().copy() if isinstance(tokens, torch.Tensor) else np.array(tokens))
        seen["lr"].append(opt.param_groups[0]["lr"])
        return real_step(model, opt, tokens, *a, **kw)

    def loader(self, rank=0, world=1, start_step=0, **kw):
        seen["loaders"].append((start_step, kw.get("end_step")))
        return real_loader(self, rank=rank, world=world, start_step=start_step, **kw)

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(tinyllama.Mix, "loader", loader)
    torch.set_num_threads(1)
    loop.train(cfg, resume=resume)
    monkeypatch.undo()
    seen["metrics"] = read_metrics(Path(cfg.out))
    return seen


@pytest.fixture(scope="module")
def unpoisoned(real_mix, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return train_recorded(mp, real_config(real_mix, tmp_path_factory.mktemp("clean") / "run"), poison=None)


@pytest.fixture(scope="module")
def real_guarded(real_mix, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-guarded") / "run"
    with pytest.MonkeyPatch.context() as mp:
        seen = train_recorded(mp, real_config(real_mix, out))
    return out, seen


def test_a_rewind_on_the_real_loader_replays_exactly_the_unpoisoned_batches(real_mix, unpoisoned, real_guarded):
    import tinyllama

    out, seen = real_guarded
    mix = tinyllama.Mix(real_mix)
    # The unpoisoned run: one loader from step 0, every step's batch is the mix's batch.
    assert unpoisoned["loaders"] == [(0, REAL_STEPS)]
    assert all(np.array_equal(t, mix.batch(s)[0]) for s, t in enumerate(unpoisoned["tokens"]))
    # The poisoned run: steps 0..5 (5 refused), back to the checkpoint at 3 (a new loader there),
    # 3 and 4 again, 5 skipped (no forward), then 6 and 7.
    order = [0, 1, 2, 3, 4, 5, 3, 4, 6, 7]
    assert seen["loaders"] == [(0, REAL_STEPS), (REAL_SAVE, REAL_STEPS)]
    assert len(seen["tokens"]) == len(order)
    for i, s in enumerate(order):
        assert np.array_equal(seen["tokens"][i], unpoisoned["tokens"][s]), (i, s)
        assert seen["lr"][i] == unpoisoned["lr"][s], (i, s)  # the lr of the step: a skip moves nothing
    (rw,) = events(seen["metrics"], "rewind")
    assert (rw["step"], rw["to"], rw["skip"]) == (REAL_POISON, f"step-{REAL_SAVE}", [REAL_POISON])
    assert "not finite" in rw["why"] and rw["bad_loss"] is None
    (skip,) = events(seen["metrics"], "skip")
    assert skip["step"] == REAL_POISON and skip["lr"] == unpoisoned["lr"][REAL_POISON]
    # Before the poisoned step the run is the unpoisoned one, bit for bit (the replay included);
    # the skipped update changes what follows.
    got, want = losses(steps_of(seen["metrics"])), losses(steps_of(unpoisoned["metrics"]))
    assert sorted(got) == [s for s in range(1, REAL_STEPS + 1) if s != REAL_POISON + 1]
    assert {s: got[s] for s in range(1, REAL_POISON + 1)} == {s: want[s] for s in range(1, REAL_POISON + 1)}
    assert got[REAL_STEPS] != want[REAL_STEPS]
    trainer = json.loads((out / f"checkpoints/step-{REAL_STEPS}/trainer.json").read_text())
    assert trainer["guard"]["skip"] == [REAL_POISON]


@pytest.mark.slow  # the rewind itself on the real loader is proved in the fast suite (above)
def test_a_resumed_run_on_the_real_loader_skips_the_same_step(real_mix, real_guarded, tmp_path, monkeypatch):
    """Stopped at step 4 (before the poisoned step) and resumed: the resumed run meets step 5,
    rewinds to its own checkpoint at 4 and skips it; stopped at 7 (after it) and resumed without
    the hook: the skip list comes from the checkpoint. Both end as the uninterrupted run."""
    out, seen = real_guarded
    want = losses(steps_of(seen["metrics"]))
    before = real_config(real_mix, tmp_path / "before")
    before.run.stop_after = 4
    train_recorded(monkeypatch, before)
    before.run.stop_after = 0
    again = train_recorded(monkeypatch, before, resume=True)
    assert again["loaders"] == [(4, REAL_STEPS), (4, REAL_STEPS)]  # resumed at 4, rewound to 4
    (rw,) = events(again["metrics"], "rewind")
    assert (rw["step"], rw["to"], rw["skip"]) == (REAL_POISON, "step-4", [REAL_POISON])
    assert losses(steps_of(again["metrics"])) == want
    after = real_config(real_mix, tmp_path / "after")
    after.run.stop_after = 7
    train_recorded(monkeypatch, after)
    after.run.stop_after = 0
    resumed = train_recorded(monkeypatch, after, resume=True, poison=None)
    assert losses(steps_of(resumed["metrics"])) == want
    assert json.loads((tmp_path / f"after/checkpoints/step-{REAL_STEPS}/trainer.json").read_text())["guard"][
        "skip"] == [REAL_POISON]


@pytest.mark.slow
def test_two_ranks_rewind_on_the_real_loader_like_one(real_mix, real_guarded, tmp_path):
    """torchrun, 2 FSDP ranks (gloo) on the real mix, step 5 poisoned on both: the same rewind,
    the same skip, the losses of the 1-process run (up to float reduction order)."""
    import os
    import socket
    import subprocess
    import sys

    from test_hf import MODEL
    from test_train import ROOT

    _, seen = real_guarded
    cfg = write_config(tmp_path, "\n".join([
        f'mix = "{real_mix}"', 'out = "run"', "micro_batch = 16", "[model]",
        *(f"{k} = {v}" for k, v in {**MODEL, "max_seq_len": 128}.items()),
        "[optim]", "lr = 1e-2", "min_lr = 1e-3", "warmup_steps = 2", "[run]", f"max_steps = {REAL_STEPS}",
        "log_every = 1", f"save_every = {REAL_SAVE}", "keep_last = 5", 'precision = "fp32"', "compile = false", ""]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYLLAMA_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TINYLLAMA_NONFINITE_AT": str(REAL_POISON)})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                        f"--master-port={port}", "-m", "tinyllama.train", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    two = read_metrics(tmp_path / "run")
    assert [(e["step"], e["to"], e["skip"]) for e in events(two, "rewind")] == [
        (REAL_POISON, f"step-{REAL_SAVE}", [REAL_POISON])]
    assert [e["step"] for e in events(two, "skip")] == [REAL_POISON]
    assert losses(steps_of(two)) == pytest.approx(losses(steps_of(seen["metrics"])), rel=1e-4, abs=1e-4)
    trainer = json.loads((tmp_path / f"run/checkpoints/step-{REAL_STEPS}/trainer.json").read_text())
    assert trainer["guard"]["skip"] == [REAL_POISON] and trainer["world"] == 2
