"""Document-masked packing in the trainer (`run.document_masking`), on a mix built from the real
data slice and read through the Rust ring-buffer loader.

Masking on (the default) and off both learn and give different losses; with masking on, one
document's loss does not depend on which documents share its window (computed through the
trainer's own loss path, `loss_targets` + the model's chunked loss); the setting is recorded in
metrics.jsonl and trainer.json, and `--resume` with the other setting is refused in one line;
stop + resume repeats an uninterrupted masked run; 1 rank equals 2 under torchrun (slow).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import CORPORA, write_spec
from test_train import ROOT

import tinyllama

BOS, EOS = 1, 2
STEPS = 10
MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "intermediate_size": 176,
         "vocab_size": 32000, "max_seq_len": 128}


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    """Two corpora of the slice, BOS and EOS stored (the spec's defaults), windows of 128 tokens,
    8 sequences a step."""
    from tinyllama.data.build import build_mix

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("masking-mix")
    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
    dedup = "none"
    holdout_docs = 4

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    dedup = "none"
    holdout_docs = 4
    """
    stages = """
    [[stages]]
    name = "basic"
    tokens = "16K"
    batch_tokens = 1024
    weights = { slimpajama = 0.5, skypile = 0.5 }
    """
    build_mix(write_spec(d, corpora=corpora, stages=stages), d / "mix", 1)
    return d / "mix"


def write_config(dir: Path, mix: Path, **run) -> Path:
    runs = {"max_steps": STEPS, "log_every": 1, "save_every": 0, "precision": "fp32", "compile": False, **run}
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / "train.toml"
    path.write_text(
        f'mix = "{mix}"\nout = "run"\nmicro_batch = 4\n'
        "[optim]\nlr = 1e-2\nmin_lr = 1e-3\nwarmup_steps = 2\n"
        "[model]\n" + "".join(f"{k} = {v}\n" for k, v in MODEL.items())
        + "[run]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in runs.items()),
        encoding="utf-8",
    )
    return path


def train(config: Path, overrides=(), resume=False) -> list[dict]:
    from tinyllama.train import train as run_train
    from tinyllama.train.config import load_config

    cfg = load_config(config, overrides)
    run_train(cfg, resume=resume)
    return read_metrics(Path(cfg.out))


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def losses(metrics: list[dict]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics}


@pytest.fixture(scope="module")
def masked(mix, tmp_path_factory) -> Path:
    """The default run (masking on): the reference of the resume and torchrun checks."""
    cfg = write_config(tmp_path_factory.mktemp("masked"), mix)
    train(cfg)
    return cfg.parent / "run"


@pytest.fixture(scope="module")
def unmasked(mix, tmp_path_factory) -> Path:
    cfg = write_config(tmp_path_factory.mktemp("unmasked"), mix, document_masking=False)
    train(cfg)
    return cfg.parent / "run"


def test_markers_come_from_the_mix_or_the_llama_convention(mix):
    from tinyllama.train.loop import document_markers

    m = tinyllama.Mix(mix)
    assert (m.lock["bos_id"], m.lock["eos_id"]) == (BOS, EOS)
    assert document_markers(m) == (BOS, EOS)
    assert document_markers(object()) == (BOS, EOS)  # a stand-in source without a lock

    class EosOnly:
        bos_id, eos_id = None, 7

    assert document_markers(EosOnly()) == (None, 7)
    assert document_markers(type("L", (), {"lock": {"bos_id": None, "eos_id": 2}})()) == (None, 2)


def test_loss_targets_mask_the_next_documents_first_token():
    from tinyllama.train.loop import loss_targets

    # a window starting mid-document: [9 9 </s> <s> 5 6 </s> <s> 7] + next token
    x = torch.tensor([[9, 9, EOS, BOS, 5, 6, EOS, BOS, 7, 8]])
    doc, y, counted = loss_targets(x, True, (BOS, EOS))
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2]]
    # the targets <s> after </s> start the next document: not scored
    assert y.tolist() == [[9, EOS, -100, 5, 6, EOS, -100, 7, 8]]
    assert counted.tolist() == [7]
    # EOS-only packing: </s> would be scored on the next document's first token
    x = torch.tensor([[9, 9, EOS, 5, 6, EOS, 7, 8]])
    doc, y, counted = loss_targets(x, True, (None, EOS))
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 2]]
    assert y.tolist() == [[9, EOS, -100, 6, EOS, -100, 8]]
    # the last target starts a document: decided from the window's extra token
    doc, y, _ = loss_targets(torch.tensor([[4, 5, EOS, 6]]), True, (None, EOS))
    assert doc.tolist() == [[0, 0, 0]] and y.tolist() == [[5, EOS, -100]]
    # masking off: TinyLlama's packing, every position scored
    doc, y, counted = loss_targets(x, False, (None, EOS))
    assert doc is None and counted is None and torch.equal(y, x[:, 1:])


def test_masking_on_and_off_both_learn_and_differ(masked, unmasked, mix):
    on, off = read_metrics(masked), read_metrics(unmasked)
    for ms in (on, off):
        ls = [m["loss"] for m in ms]
        assert len(ls) == STEPS
        assert ls[0] > 9.5, ls  # ~ln(32000) at init
        assert np.mean(ls[-3:]) < ls[0] - 1.5, ls
    # the setting is in every metrics record and in the checkpoint
    assert all(m["document_masking"] is True for m in on) and all(m["document_masking"] is False for m in off)
    for run, want in ((masked, True), (unmasked, False)):
        trainer = json.loads((run / f"checkpoints/step-{STEPS}/trainer.json").read_text())
        assert trainer["document_masking"] is want and trainer["config"]["run"]["document_masking"] is want
    # the windows do pack several documents, and the switch changes the numbers: at step 1 (the
    # same initial weights, so only the masking differs) by far more than fp32 rounding, and at
    # every step after
    m = tinyllama.Mix(mix)
    assert sum(int((m.batch(s)[0][:, 1:] == BOS).sum()) for s in range(STEPS)) >= 20
    assert abs(on[0]["loss"] - off[0]["loss"]) > 1e-4, (on[0]["loss"], off[0]["loss"])
    for a, b in zip(on, off):
        assert abs(a["loss"] - b["loss"]) > 1e-5, (a["step"], a["loss"], b["loss"])


def _document_loss(model, window: torch.Tensor, start: int, end: int, markers, masking=True) -> torch.Tensor:
    """Per-token losses of the positions whose inputs are window[start:end] (one document),
    through the trainer's loss path."""
    from tinyllama.train.loop import loss_targets

    x = window[None]
    doc, y, _ = loss_targets(x, masking, markers)
    with torch.no_grad():
        ce = model(x[:, :-1], doc, targets=y)
    return ce[0, start:end]


@pytest.mark.parametrize("bos", [True, False], ids=["bos-eos", "eos-only"])
def test_a_documents_loss_does_not_depend_on_its_window(masked, mix, bos):
    """Document D packed after two different prefixes and before two different successors
    (BOS + EOS as the mix stores them, and EOS-only): its per-token losses are equal within
    fp32 rounding with masking on, and differ with masking off."""
    m = tinyllama.Mix(mix)
    model = tinyllama.load_model(masked)
    docs = [np.asarray(d, dtype=np.int64) for d in m.documents("slimpajama")]
    docs = [d if bos else d[1:] for d in docs]  # EOS-only packing: drop the stored <s>
    markers = (BOS if bos else None, EOS)
    d = next(d for d in docs if 20 <= len(d) <= 60)
    others = [o for o in docs if len(o) > 200 and o is not d]
    assert len(others) >= 4
    T = 128

    def pack(prefix: np.ndarray, n_prefix: int, successor: np.ndarray) -> torch.Tensor:
        # window: the tail of `prefix` (a mid-document start), D, then `successor`
        w = np.concatenate([prefix[-n_prefix:], d, successor])[: T + 1]
        assert len(w) == T + 1
        return torch.from_numpy(w)

    a = pack(others[0], 17, others[1])
    b = pack(others[2], 50, others[3])
    la = _document_loss(model, a, 17, 17 + len(d), markers)
    lb = _document_loss(model, b, 50, 50 + len(d), markers)
    assert la.shape == (len(d),)
    # D's last position is its </s>; the target after it is the successor's first token: unscored
    assert float(la[-1]) == float(lb[-1]) == 0.0
    assert float(la[:-1].min()) > 0
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    # and D's loss is the one the model gives D alone, from position 0
    alone = _document_loss(model, torch.from_numpy(np.concatenate([d, others[1][:1]])), 0, len(d), markers)
    torch.testing.assert_close(la, alone, rtol=1e-5, atol=1e-5)
    # TinyLlama's packing: D sees what precedes it, so its loss depends on the window
    ua = _document_loss(model, a, 17, 17 + len(d), markers, masking=False)
    ub = _document_loss(model, b, 50, 50 + len(d), markers, masking=False)
    assert float((ua - ub).abs().max()) > 1e-3


def test_resume_with_the_other_setting_is_refused_in_one_line(mix, tmp_path):
    from tinyllama.errors import CheckpointError

    cfg = write_config(tmp_path, mix, stop_after=2)
    train(cfg)
    with pytest.raises(CheckpointError) as e:
        train(cfg, ["run.document_masking=false", "run.stop_after=0"], resume=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "step-2" in msg and "run.document_masking = true" in msg and "false" in msg
    # nothing was trained on: the metrics still end at step 2
    assert sorted(losses(read_metrics(tmp_path / "run"))) == [1, 2]
    # and the other way round, through the command line
    off = write_config(tmp_path / "off", mix, stop_after=2, document_masking=False)
    train(off)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "train", "--config", str(off), "--resume",
                        "--set", "run.document_masking=true"], capture_output=True, text=True, env=env,
                       timeout=600, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "run.document_masking = false" in lines[0] and "true" in lines[0] and "step-2" in lines[0]


def test_resume_with_masking_is_exact(masked, mix, tmp_path):
    cfg = write_config(tmp_path, mix, stop_after=4, save_every=2)
    first = train(cfg)
    assert sorted(losses(first)) == [1, 2, 3, 4]
    resumed = train(cfg, ["run.stop_after=0"], resume=True)
    want, got = losses(read_metrics(masked)), losses(resumed)
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == want[s], (s, got[s], want[s])  # bit-identical on one process


@pytest.mark.slow
def test_two_rank_torchrun_with_masking_matches_one(masked, mix, tmp_path):
    cfg = write_config(tmp_path, mix, document_masking=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                        "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "tinyllama.train", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-5000:]
    want, got = losses(read_metrics(masked)), losses(read_metrics(tmp_path / "run"))
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-4, abs=1e-4), s


def test_check_compatible_reads_the_recorded_setting(tmp_path):
    """trainer.json's `document_masking` decides; an import-hf checkpoint (no packing history)
    continues with either setting; a trainer checkpoint from before the setting existed was
    TinyLlama's packing."""
    from tinyllama.errors import CheckpointError
    from tinyllama.train.checkpoint import check_compatible
    from tinyllama.train.config import config_from_dict

    def cfg(masking: bool):
        return config_from_dict({"mix": "m", "out": "o", "model": dict(MODEL), "run": {"document_masking": masking}})

    path = tmp_path / "step-3"
    on = cfg(True).to_dict()
    check_compatible(path, {"document_masking": True, "config": on}, cfg(True), None, False)
    with pytest.raises(CheckpointError, match=r"step-3: trained with run.document_masking = true, the config has f"):
        check_compatible(path, {"document_masking": True, "config": on}, cfg(False), None, False)
    for masking in (True, False):
        check_compatible(path, {"config": on, "imported_from": "/hf"}, cfg(masking), None, False)
    old = {"config": {"model": dict(MODEL), "run": {}}}
    check_compatible(path, old, cfg(False), None, False)
    with pytest.raises(CheckpointError, match="run.document_masking = false"):
        check_compatible(path, old, cfg(True), None, False)
