"""Invariants as properties (hypothesis): the sampler's contract on a real built mix (any step,
any world size: the ranks' slices concatenate to the world-1 batch; the same step gives the
same batch), the learning-rate schedule's shape, and the spec's count and byte suffixes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CORPORA, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyllama
from tinyllama.data.spec import parse_bytes, parse_count

STAGES = """
[[stages]]
name = "basic"
tokens = "30K"
batch_tokens = 1024
weights = { slimpajama = 1.0 }

[[stages]]
name = "continual"
tokens = "40K"
batch_tokens = 1024
weights = { slimpajama = 0.6, skypile = 0.4 }
ramp_tokens = "20K"

[[stages]]
name = "cooldown"
tokens = "30K"
batch_tokens = 3072
weights = { slimpajama = 0.6, skypile = 0.4 }
"""


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> tinyllama.Mix:
    from tinyllama.data.build import build_mix

    d = tmp_path_factory.mktemp("prop")
    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    """
    build_mix(write_spec(d, corpora=corpora, stages=STAGES), d / "mix", 2, progress=False)
    return tinyllama.Mix(d / "mix")


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_rank_slices_concatenate_to_the_global_batch(mix, data):
    step = data.draw(st.integers(0, mix.num_steps() - 1), label="step")
    n = mix.batch_sequences(step)
    world = data.draw(st.sampled_from([w for w in range(1, 9) if n % w == 0]), label="world")
    whole, corpora = mix.batch(step)
    assert whole.shape == (n, mix.seq_len + 1)
    parts = [mix.batch(step, r, world) for r in range(world)]
    assert np.array_equal(np.concatenate([t for t, _ in parts]), whole)
    assert sum((c for _, c in parts), []) == corpora
    again, _ = mix.batch(step)
    assert np.array_equal(again, whole)  # a pure function of the step


@SETTINGS
@given(data=st.data())
def test_mixture_follows_the_schedule(mix, data):
    """Each step's corpus counts are the weights of that step apportioned to whole sequences."""
    step = data.draw(st.integers(0, mix.num_steps() - 1), label="step")
    _, corpora = mix.batch(step)
    weights = mix.weights_at(step)
    n = len(corpora)
    for name, w in weights.items():
        assert abs(corpora.count(name) - w * n) < 1.0 + 1e-9, (step, name, w, corpora.count(name))


@settings(max_examples=200, deadline=None)
@given(lr=st.floats(1e-6, 1.0), frac=st.floats(0.0, 1.0), warmup=st.integers(0, 50), extra=st.integers(1, 500))
def test_lr_schedule_shape(lr, frac, warmup, extra):
    from tinyllama.train.config import config_from_dict
    from tinyllama.train.optim import lr_at

    min_lr = lr * frac
    cfg = config_from_dict({"mix": "m", "out": "o", "model": "tiny",
                            "optim": {"lr": lr, "min_lr": min_lr, "warmup_steps": warmup}})
    total = warmup + extra
    lrs = [lr_at(s, cfg, total) for s in range(total + 1)]
    assert all(0 < x <= lr * (1 + 1e-12) for x in lrs[:warmup])  # warmup starts above 0
    assert all(min_lr * (1 - 1e-12) <= x <= lr * (1 + 1e-12) for x in lrs[warmup:])
    assert all(a <= b * (1 + 1e-12) for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1]))  # warmup rises
    assert all(a * (1 + 1e-12) >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))  # then decays
    assert lrs[total] == pytest.approx(min_lr, rel=1e-9, abs=1e-15)


@given(n=st.integers(0, 10**6), unit=st.sampled_from(["", "K", "M", "B", "T"]))
def test_counts_are_decimal_and_bytes_binary(n, unit):
    dec = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[unit]
    assert parse_count(f"{n}{unit}", "k") == n * dec
    if unit != "B":
        binary = {"": 1, "K": 2**10, "M": 2**20, "T": 2**40}[unit]
        assert parse_bytes(f"{n}{unit}", "k") == n * binary


def test_byte_suffixes_are_binary():
    assert parse_bytes("1M", "k") == 2**20
    assert parse_bytes("64M", "max_doc_bytes") == 64 * 2**20
    assert parse_bytes("2G", "dedup.memory") == 2 * 2**30
    assert parse_count("1M", "k") == 10**6  # token counts stay decimal


@settings(max_examples=200, deadline=None)
@given(frac=st.floats(0.05, 1.0), warmup=st.integers(0, 20), extra=st.integers(5, 400),
       shape=st.sampled_from(["linear", "1-sqrt"]))
def test_wsd_schedule_shape(frac, warmup, extra, shape):
    """WSD: warmup, then exactly `lr` until the decay starts, then a monotone decay that ends at
    min_lr on the last step; 1-sqrt lies below linear during the decay."""
    from tinyllama.train.config import config_from_dict
    from tinyllama.train.optim import lr_at

    optim = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": warmup, "schedule": "wsd", "decay_fraction": frac,
             "decay_shape": shape}
    cfg = config_from_dict({"mix": "m", "out": "o", "model": "tiny", "optim": optim})
    total = warmup + extra
    lrs = [lr_at(s, cfg, total) for s in range(total + 1)]
    decay_start = max(warmup, total - max(1, round(frac * total)))
    assert all(x == 1.0 for x in lrs[warmup:decay_start])
    assert all(a >= b for a, b in zip(lrs[decay_start:], lrs[decay_start + 1 :]))
    assert lrs[total] == pytest.approx(0.1)
    if shape == "1-sqrt":
        lin = config_from_dict({"mix": "m", "out": "o", "model": "tiny", "optim": {**optim, "decay_shape": "linear"}})
        assert all(lr_at(s, cfg, total) <= lr_at(s, lin, total) + 1e-12 for s in range(decay_start, total + 1))
