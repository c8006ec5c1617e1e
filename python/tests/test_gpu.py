"""The CUDA paths (`gpu` marker: `pytest -m gpu`, or scripts/gpu-check.sh on a GPU machine;
every test here skips where there is no CUDA device):

- each document-masked attention kernel (flash-attn varlen, torch's varlen, FlexAttention)
  against SDPA with an explicit mask, forward and backward, fp32 and bf16;
- eager and compiled bf16 training steps of a small model on a real mix through the Rust
  loader with page-locked ring buffers;
- a one-process NCCL group with FSDP2 (bf16 mixed precision) against the unsharded model, and a
  DCP save / load on that group;
- the export of a CUDA-trained checkpoint, loaded by `transformers`.

Runs without the Rust extension too (a GPU machine with torch but no toolchain and no wheel):
the model is then loaded from tinyllama/model.py by path, and the tests that need the extension
(a built mix, the loader, checkpoints) say so and skip."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]


def load_by_path(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def model_module():
    try:
        import tinyllama.model as model

        return model
    except ImportError:  # no extension: model.py is torch only
        return load_by_path("tinyllama_model_by_path", "tinyllama/model.py")


M = model_module()


def extension():
    """The package with its Rust extension, or a skip that says why."""
    try:
        import tinyllama
    except ImportError as e:
        pytest.skip(f"needs the tinyllama extension (install the abi3 wheel from dist/): {e}")
    return tinyllama


# ---- 1. attention kernels against SDPA with an explicit mask --------------------------------

B, T, H, KV, D = 2, 384, 8, 2, 64


def document_ids(seed: int = 0) -> torch.Tensor:
    """[B, T] ids of packed documents: a few long ones, a one-token one, one across the row's end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        cuts = sorted(set(torch.randint(1, T, (6,), generator=g).tolist()) | {100, 101})
        for c in cuts:
            ids[b, c:] += 1
    return ids.cuda()


def qkv(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [(B, T, H, D), (B, T, KV, D), (B, T, KV, D)]
    return tuple(torch.randn(s, device="cuda", generator=g, dtype=torch.float32).to(dtype).requires_grad_()
                 for s in shapes)


def kernel_or_skip(kernel: str, dtype: torch.dtype) -> None:
    have = {"flash": M.flash_attn_varlen_func, "varlen": M.varlen_attn, "flex": M.flex_attention}[kernel]
    if have is None:
        pytest.skip(f"{kernel}: not available in this torch / without flash-attn")
    if kernel in ("flash", "varlen") and dtype == torch.float32:
        pytest.skip(f"{kernel}: the varlen flash kernels take bf16 / fp16 only (fp32 runs FlexAttention)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel", ["flash", "varlen", "flex"])
def test_attention_kernel_matches_sdpa_with_an_explicit_mask(kernel, dtype):
    kernel_or_skip(kernel, dtype)
    ids = document_ids()
    dy = torch.randn(B, T, H, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).to(dtype)
    q, k, v = qkv(dtype)
    y = M.attention(q, k, v, M.Documents.build(ids, kernel))
    y.backward(dy)
    got = [y.detach(), q.grad, k.grad, v.grad]
    q2, k2, v2 = qkv(dtype)
    ref = M.attention(q2, k2, v2, M.Documents.build(ids, "sdpa"))
    ref.backward(dy)
    want = [ref.detach(), q2.grad, k2.grad, v2.grad]
    tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m, n=name: f"{kernel} {n}: {m}")
    # the documents matter: plain causal attention over the row differs
    q3, k3, v3 = qkv(dtype)
    causal = M.attention(q3, k3, v3, None)
    assert (causal.float() - want[0].float()).abs().max() > 10 * tol["atol"]


# ---- 2. training steps on a real mix through the Rust loader -------------------------------


@pytest.fixture(scope="module")
def cuda_mix(tmp_path_factory) -> Path:
    extension()
    from conftest import two_corpus_mix

    return two_corpus_mix(tmp_path_factory.mktemp("gpu-mix"), holdout_docs=10, workers=2)


MODEL = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_kv_head": 2, "intermediate_size": 352, "vocab_size": 32000,
         "max_seq_len": 128}


def train_on_cuda(mix: Path, out: Path, compile: bool, monkeypatch) -> dict:
    tinyllama = extension()
    from tinyllama.train import train
    from tinyllama.train.config import config_from_dict

    loaders = []
    real = tinyllama.Mix.loader

    def loader(self, *a, **kw):
        loaders.append(real(self, *a, **kw))
        return loaders[-1]

    monkeypatch.setattr(tinyllama.Mix, "loader", loader)
    cfg = config_from_dict({
        "mix": str(mix), "out": str(out), "micro_batch": 16, "model": dict(MODEL),
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "run": {"max_steps": 8, "log_every": 1, "save_every": 4, "precision": "bf16", "compile": compile,
                "eval_every": 8}})
    train(cfg)
    monkeypatch.undo()
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {"loaders": loaders, "steps": [m for m in lines if "loss" in m],
            "val": [m for m in lines if "val/loss" in m]}


@pytest.fixture(scope="module")
def cuda_runs(cuda_mix, tmp_path_factory):
    runs = {}
    for compile in (False, True):
        out = tmp_path_factory.mktemp("compiled" if compile else "eager") / "run"
        with pytest.MonkeyPatch.context() as mp:
            runs[compile] = (out, train_on_cuda(cuda_mix, out, compile, mp))
    return runs


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_bf16_steps_on_a_real_mix_through_the_pinned_loader(cuda_runs, compile):
    _, r = cuda_runs[compile]
    assert r["loaders"] and all(ld.pinned for ld in r["loaders"])  # the ring is page-locked
    losses = [m["loss"] for m in r["steps"]]
    assert len(losses) == 8 and all(isinstance(x, float) for x in losses)
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(m["max_memory_gb"] > 0 for m in r["steps"])
    assert r["val"] and r["val"][-1]["val/loss"] is not None


def test_compiled_steps_track_eager_ones(cuda_runs):
    eager = [m["loss"] for m in cuda_runs[False][1]["steps"]]
    compiled = [m["loss"] for m in cuda_runs[True][1]["steps"]]
    assert compiled == pytest.approx(eager, rel=2e-2)


def test_the_kernel_a_cuda_bf16_run_uses_is_a_varlen_or_flex_one():
    kernel = M.attention_kernel(torch.device("cuda"), torch.bfloat16)
    assert kernel in ("flash", "varlen", "flex"), kernel  # never the [T, T] mask on a GPU


def test_export_of_a_cuda_trained_checkpoint_loads_in_transformers(cuda_runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    tinyllama = extension()
    from tinyllama.hf import export

    run, _ = cuda_runs[False]
    hf = export(run, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf, local_files_only=True).eval()
    ours = tinyllama.load_model(run)
    x = torch.tensor([[1, 450, 4955, 310, 278, 3303, 338]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-4, rtol=1e-4)


# ---- 3. NCCL and FSDP2 in one process --------------------------------------------------------

NCCL_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, tempfile
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    root = Path(sys.argv[1])

    def load(name, rel):  # torch-only modules, by path: no extension needed
        spec = importlib.util.spec_from_file_location(name, root / rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    M = load("tl_model", "tinyllama/model.py")
    P = load("tl_parallel", "tinyllama/train/parallel.py")
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
    cfg = M.ModelConfig(**json.loads(sys.argv[2]))
    mesh = P.build_mesh("cuda", 1, 1)
    ref = M.build_model(cfg, dev, seed=5)
    fsdp = M.build_model(cfg, dev, seed=5, prepare=lambda m: P.shard_model(m, mesh, bf16=True))
    x = torch.randint(3, cfg.vocab_size, (4, 129), device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    x[:, 40] = 1  # a BOS: two documents per row
    doc = M.document_ids_from_tokens(x[:, :-1], 1, 2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_loss = ref(x[:, :-1], doc, targets=x[:, 1:]).mean()
    loss = fsdp(x[:, :-1], doc, targets=x[:, 1:]).mean()
    ref_loss.backward()
    loss.backward()
    rel = max(float((p.grad.full_tensor() - r.grad).norm() / r.grad.norm())
              for p, r in zip(fsdp.parameters(), ref.parameters()))
    torch.optim.AdamW(fsdp.parameters(), lr=1e-3).step()
    t = torch.ones(3, device=dev)
    dist.all_reduce(t)
    ckpt = tempfile.mkdtemp()
    dcp.save(get_model_state_dict(fsdp), checkpoint_id=ckpt)
    again = M.build_model(cfg, dev, seed=6, prepare=lambda m: P.shard_model(m, mesh, bf16=True))
    sd = get_model_state_dict(again)
    dcp.load(sd, checkpoint_id=ckpt)
    set_model_state_dict(again, sd)
    same = all(torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(fsdp.parameters(), again.parameters()))
    print(json.dumps({"backend": dist.get_backend(), "loss": float(loss.detach()),
                      "ref_loss": float(ref_loss.detach()), "grad_rel": rel, "all_reduce": t.tolist(),
                      "dcp_roundtrip": same,
                      "sharded": all(hasattr(p, "full_tensor") for p in fsdp.parameters())}))
    dist.destroy_process_group()
""")


def test_fsdp2_on_a_one_process_nccl_group_matches_the_unsharded_model(tmp_path):
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", NCCL_SCRIPT, str(ROOT), json.dumps(MODEL)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["backend"] == "nccl" and got["sharded"] and got["all_reduce"] == [1.0, 1.0, 1.0]
    assert got["loss"] == pytest.approx(got["ref_loss"], rel=1e-2)  # bf16 params vs bf16 autocast
    assert got["grad_rel"] < 5e-2, got
    assert got["dcp_roundtrip"]
