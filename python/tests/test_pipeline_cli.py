"""The whole pipeline through the command line, on a mix built by `tinyllama mix build` from the
real data slice, with the trainer reading it through the Rust ring-buffer loader (not a
stand-in source): build, verify, sample --decode, train, resume, `python -m tinyllama.train`,
export, import-hf, generate, eval. Each command's output is checked against the library."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import CORPORA, write_spec
from test_train import ROOT

import tinyllama

MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "intermediate_size": 176,
         "vocab_size": 32000, "max_seq_len": 128}


def run(*args: str, module: str = "tinyllama.cli", timeout: int = 600, check: bool = True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                       timeout=timeout, check=False)
    if check:
        assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-5000:])
    return r


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """`tinyllama mix build` of two corpora of the slice (with near-dup dedup), 8 held-out docs each."""
    d = tmp_path_factory.mktemp("pipeline")
    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
    dedup = "near"
    holdout_docs = 8

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    holdout_docs = 8
    """
    stages = """
    [[stages]]
    name = "basic"
    tokens = 3072
    batch_tokens = 1024
    weights = { slimpajama = 1.0 }

    [[stages]]
    name = "cooldown"
    tokens = "40K"
    batch_tokens = 4096
    weights = { slimpajama = 0.5, skypile = 0.5 }
    """
    spec = write_spec(d, corpora=corpora, stages=stages)
    r = run("mix", "build", "--spec", str(spec), "--out", str(d / "mix"), "--workers", "2", "--quiet")
    assert "built:" in r.stdout
    return d / "mix"


def write_train_config(dir: Path, mix: Path, **run_keys) -> Path:
    model = "\n".join(f"{k} = {v}" for k, v in MODEL.items())
    runs = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "max_steps": 6, "log_every": 1, "save_every": 3, "precision": "fp32", "compile": False, **run_keys}.items())
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / "train.toml"
    path.write_text(textwrap.dedent(f"""\
        mix = "{mix}"
        out = "run"
        micro_batch = 1
        [optim]
        lr = 1e-2
        min_lr = 1e-3
        warmup_steps = 2
        """) + "[model]\n" + model + "\n[run]\n" + runs + "\n")
    return path


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory) -> Path:
    """`tinyllama train` for 6 steps across the stage change (global batch 8 -> 32 sequences)."""
    cfg = write_train_config(tmp_path_factory.mktemp("train"), built)
    run("train", "--config", str(cfg))
    return cfg.parent / "run"


def test_verify_and_sample_decode(built):
    assert "all shards ok" in run("mix", "verify", str(built)).stdout
    mix = tinyllama.Mix(built)
    tokens, corpora = mix.batch(5, 1, 2)
    out = run("mix", "sample", str(built), "--step", "5", "--rank", "1", "--world", "2", "--decode").stdout
    tok = tinyllama.Tokenizer(mix.tokenizer_path)
    for i, (row, corpus) in enumerate(zip(tokens, corpora)):
        assert f"[{i}] {corpus} epoch" in out
        assert tok.decode(row.tolist(), skip_special_tokens=False) in out
    data = json.loads(run("mix", "sample", str(built), "--step", "5", "--json").stdout)
    assert data["tokens"] == mix.batch(5)[0].tolist()


def test_train_reads_the_mix_through_the_ring_loader(trained, built):
    """The logged loss of step s equals the model's loss on `Mix.batch(s)` before that step's
    update: the ring loader delivered exactly the sampler's batch, across the batch-size change.
    The run masks documents (the default): the loss is computed here from the logits, with the
    documents found from the mix's BOS / EOS and no target on the next document's first token."""
    from tinyllama.model import document_ids_from_tokens
    from tinyllama.train.checkpoint import committed_steps

    got = losses(trained)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert committed_steps(trained / "checkpoints") == [3, 6]
    model = tinyllama.load_model(trained / "checkpoints/step-3")
    x = torch.from_numpy(tinyllama.Mix(built).batch(3)[0])
    assert x.shape[0] == 32  # the cooldown stage's global batch
    lock = tinyllama.Mix(built).lock
    doc = document_ids_from_tokens(x, lock["bos_id"], lock["eos_id"])
    y = x[:, 1:].masked_fill(doc[:, 1:] != doc[:, :-1], -100)
    assert int((y == -100).sum()) > 0  # the batch packs several documents
    with torch.no_grad():
        logits = model(x[:, :-1], doc[:, :-1])
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # 0 at -100
        want = (ce.sum(1) / (y != -100).sum(1)).mean().item()
    assert json.loads((trained / "metrics.jsonl").read_text().splitlines()[3])["document_masking"] is True
    assert got[4] == pytest.approx(want, rel=1e-4)


def test_resume_via_the_cli_repeats_the_run(trained, built, tmp_path):
    cfg = write_train_config(tmp_path, built, stop_after=2)
    run("train", "--config", str(cfg))
    assert sorted(losses(tmp_path / "run")) == [1, 2]
    run(str(cfg), "--resume", "--set", "run.stop_after=0", module="tinyllama.train")  # python -m tinyllama.train
    want, got = losses(trained), losses(tmp_path / "run")
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5), s


def test_export_generate_eval_import(trained, built, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinyllama.eval.generate import Sampling, _continuation, generate_ids
    from tinyllama.eval.perplexity import evaluate

    hf = tmp_path / "hf"
    assert f"wrote {hf}" in run("export", str(trained), "--out", str(hf)).stdout
    ours = tinyllama.load_model(trained)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf, local_files_only=True).eval()
    x = torch.from_numpy(tinyllama.Mix(built).batch(0)[0][:2, :32])
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, ours(x), atol=1e-4)

    out = run("generate", str(hf), "--prompt", "The history of", "--max-new-tokens", "8",
              "--temperature", "0").stdout
    tok = tinyllama.Tokenizer(hf / "tokenizer.json")
    ids = [tok.token_to_id("<s>")] + tok.encode("The history of").tolist()
    greedy = generate_ids(ours, ids, Sampling(max_new_tokens=8, temperature=0.0), eos_id=tok.token_to_id("</s>"))
    assert greedy, "a continuation was generated"
    assert out == "The history of" + _continuation(tok, ids, greedy) + "\n"

    (printed,) = json.loads(run("eval", str(trained), "--mix", str(built), "--json").stdout)  # one document: a list
    assert printed["path"] == str(trained)
    direct = evaluate(ours, built)
    for corpus in ("slimpajama", "skypile"):
        assert printed["corpora"][corpus]["nll"] == pytest.approx(direct["corpora"][corpus]["nll"], rel=1e-5)

    cfg = write_train_config(tmp_path / "cont", built, max_steps=6)
    run("import-hf", str(hf), "--out", str(tmp_path / "cont/run"), "--step", "6", "--config", str(cfg))
    run("train", "--config", str(cfg), "--resume", "--set", "run.max_steps=7")
    assert sorted(losses(tmp_path / "cont/run")) == [7]


@pytest.mark.slow
def test_two_rank_torchrun_on_the_real_mix_matches_one(trained, built, tmp_path):
    """2 FSDP ranks over the real mix: the losses of the one-process run, and in-loop validation
    (each rank scores its share of the held-out documents) equal to `tinyllama eval` of the
    checkpoint."""
    cfg = write_train_config(tmp_path, built, eval_every=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run("--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "tinyllama.train",
        str(cfg), module="torch.distributed.run", timeout=900)
    want, got = losses(trained), losses(tmp_path / "run")
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-4, abs=1e-4), s
    val = [m for m in metrics(tmp_path / "run") if "val/loss" in m]
    assert [m["step"] for m in val] == [3, 6]
    for rec in val:
        (printed,) = json.loads(run("eval", str(tmp_path / f"run/checkpoints/step-{rec['step']}"), "--mix",
                                    str(built), "--json").stdout)  # one document: a list, one result per run
        for corpus in ("slimpajama", "skypile"):
            assert rec[f"val/loss/{corpus}"] == pytest.approx(printed["corpora"][corpus]["nll"], rel=1e-5), corpus
        assert rec["val/loss"] == pytest.approx(printed["all"]["nll"], rel=1e-5)


@pytest.mark.slow
def test_hybrid_sharding_two_nodes_matches_one_and_resumes_on_one(trained, built, tmp_path):
    """`torchrun --nnodes 2 --nproc-per-node 2` with a c10d rendezvous on 127.0.0.1: a 2x2
    (replicate, shard) mesh, i.e. HSDP. Losses equal the one-process run; its checkpoint
    resumes on one process."""
    cfg = write_train_config(tmp_path, built, stop_after=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2", f"--node-rank={n}",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=hsdp-test",
         "-m", "tinyllama.train", str(cfg)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    for p in nodes:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-5000:]
    run("train", "--config", str(cfg), "--resume", "--set", "run.stop_after=0")
    want, got = losses(trained), losses(tmp_path / "run")
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-4, abs=1e-4), s
    shutil.rmtree(tmp_path / "run")
