"""The sampler and the zero-copy loader over a real built mix (issue: mixture schedules)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import CORPORA, TOKENIZER_ZST, write_spec

import tinyllama
from tinyllama.data.build import build_mix

STAGES = """
[[stages]]
name = "basic"
tokens = "120K"
batch_tokens = 4096
weights = { slimpajama = 1.0 }

[[stages]]
name = "continual"
tokens = "160K"
batch_tokens = 4096
weights = { slimpajama = 0.5, skypile = 0.3, starcoder = 0.2 }
ramp_tokens = "60K"

[[stages]]
name = "cooldown"
tokens = "100K"
batch_tokens = 16384
weights = { slimpajama = 0.5, skypile = 0.3, starcoder = 0.2 }
"""


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    build_mix(write_spec(tmp, stages=STAGES), tmp / "mix", workers=2, progress=False)
    return tinyllama.Mix(tmp / "mix")


def streams(mix) -> dict[str, np.ndarray]:
    return {c: np.concatenate(list(mix.documents(c))).astype(np.int64) for c in mix.corpora}


def test_rows_are_windows_of_the_corpus_streams(mix):
    s, L = streams(mix), mix.seq_len
    for step in [0, 29, 30, 45, mix.num_steps() - 1]:
        tokens, corpora = mix.batch(step)
        for row, corpus, (c2, _epoch, window) in zip(tokens, corpora, mix.samples(step)):
            assert corpus == c2
            np.testing.assert_array_equal(row, s[corpus][window * L: window * L + L + 1])


def test_batch_sizes_follow_the_stages(mix):
    info = mix.inspect()
    assert [s["batch_sequences"] for s in info["stages"]] == [32, 32, 128]
    last = mix.num_steps() - 1
    assert mix.batch(last)[0].shape == (128, 129)
    assert mix.batch(0)[0].shape == (32, 129)


def test_proportions_match_the_schedule_at_every_step(mix):
    for step in range(mix.num_steps()):
        _, corpora = mix.batch(step)
        counts = Counter(corpora)
        n = len(corpora)
        weights = mix.weights_at(step)
        for corpus, w in weights.items():
            # largest remainder: each count is the floor or the ceiling of its exact share
            assert abs(counts.get(corpus, 0) - w * n) < 1.0, (step, corpus, counts, weights)
    # inside the ramp, skypile's share rises linearly from 0
    first = mix.inspect()["stages"][1]["first_step"]
    shares = [mix.weights_at(first + k)["skypile"] for k in range(0, 15, 3)]
    assert shares[0] == 0.0 and all(a < b for a, b in zip(shares, shares[1:]))


def test_rank_slices_tile_the_global_batch(mix):
    for step in [0, 31, 40, mix.num_steps() - 1]:
        full, corpora = mix.batch(step)
        for world in (1, 2, 4, 8):
            parts = [mix.batch(step, r, world) for r in range(world)]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full)
            assert sum((p[1] for p in parts), []) == corpora


def test_no_window_twice_within_an_epoch(mix):
    seen: dict[tuple[str, int], set[int]] = {}
    for step in range(mix.num_steps()):
        for corpus, epoch, window in mix.samples(step):
            bucket = seen.setdefault((corpus, epoch), set())
            assert window not in bucket, (corpus, epoch, window, step)
            bucket.add(window)
    windows = {e["name"]: e["windows"] for e in mix.lock["corpora"]}
    for (corpus, epoch), ws in seen.items():
        assert max(ws) < windows[corpus]
        if (corpus, epoch + 1) in seen:  # a finished epoch delivered every window exactly once
            assert len(ws) == windows[corpus]
    assert mix.inspect()["corpora"]["slimpajama"]["epochs"] == max(e for c, e in seen if c == "slimpajama") + 1


def test_same_step_same_batch_across_instances(mix):
    again = tinyllama.Mix(mix.path)
    for step in (3, 50):
        np.testing.assert_array_equal(mix.batch(step)[0], again.batch(step)[0])


def test_world_size_that_does_not_divide_is_a_clear_error(mix):
    with pytest.raises(tinyllama.SpecError, match="does not divide among 3 ranks"):
        mix.batch(0, 0, 3)


def test_loader_is_zero_copy_ordered_and_resumable(mix):
    loader = mix.loader(rank=1, world=2, slots=3, threads=2)
    regions = loader._core.buffer_regions()
    batches = []
    for b in loader:
        ptr = b.tokens.data_ptr()
        assert any(start <= ptr < start + size for start, size in regions), "tokens must view the ring"
        expected, corpora = mix.batch(b.step, 1, 2)
        np.testing.assert_array_equal(b.tokens.numpy(), expected)
        assert b.corpora == corpora
        batches.append(b.step)
        del b
    assert batches == list(range(mix.num_steps()))
    resumed = mix.loader(rank=0, world=4, start_step=37)
    first = next(resumed)
    assert first.step == 37
    np.testing.assert_array_equal(first.tokens.numpy(), mix.batch(37, 0, 4)[0])
    assert resumed.state_dict() == {"step": 38}
    resumed.load_state_dict({"step": 5})
    assert next(resumed).step == 5


def test_a_slot_python_still_holds_is_never_refilled(mix):
    loader = mix.loader(slots=2, threads=1)
    a, b = next(loader), next(loader)
    snapshot = a.tokens.clone()
    with pytest.raises(tinyllama.SpecError, match="slot"):
        next(loader)  # both buffers are held: an error, never an overwrite
    np.testing.assert_array_equal(a.tokens.numpy(), snapshot.numpy())
    del a
    c = next(loader)  # a's buffer came back to the ring
    assert c.step == 2 and b.step == 1


def test_cli_sample_json_and_plot(mix, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "sample", str(mix.path), "--step", "35",
                          "--rank", "1", "--world", "4", "--json"], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    tokens, corpora = mix.batch(35, 1, 4)
    assert got["tokens"] == tokens.tolist() and got["corpus"] == corpora
    png = tmp_path / "mix.png"
    subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "plot", str(mix.path), "-o", str(png)], check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_locked_schedule_is_part_of_the_mix(mix):
    lock = json.loads((mix.path / "schedule.json").read_text())
    assert [c["name"] for c in lock["corpora"]] == mix.corpora
    assert lock["num_steps"] == mix.num_steps()
    assert str(TOKENIZER_ZST) not in (mix.path / "mix.json").read_text()
    assert str(CORPORA) not in (mix.path / "mix.json").read_text()  # relocatable: no input paths


def test_a_schedule_that_repeats_a_corpus_many_times_is_warned_about(tmp_path):
    # A full-scale schedule over the sample data: the build and inspect say so, one line a corpus.
    stages = STAGES.replace('"120K"', '"20M"')
    spec = write_spec(tmp_path, stages=stages)
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out",
                        str(tmp_path / "mix"), "--quiet"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "corpus slimpajama" in warned[0], r.stderr
    epochs = tinyllama.Mix(tmp_path / "mix").inspect()["corpora"]["slimpajama"]["epochs"]
    assert f"needs {epochs:,} epochs" in warned[0] and epochs > 4
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "inspect", str(tmp_path / "mix")],
                       capture_output=True, text=True, check=False)
    assert warned[0] in r.stdout
    # the ordinary schedule needs no warning
    assert tinyllama.Mix(tmp_path / "mix").epoch_warnings(limit=10**9) == []
