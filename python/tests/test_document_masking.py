"""Document-masked packing and the chunked loss, against real oracles.

- Parity: every document fragment of a packed window of real documents (from the test slice)
  gets the logits `transformers`' LlamaForCausalLM gives that fragment run alone (fp32).
- Kernels: every attention path that runs on a CPU (SDPA with a mask, FlexAttention, and the
  varlen glue driven by a per-document reference kernel) gives the same logits and gradients.
- Chunked cross-entropy: loss and gradients equal the unchunked `F.cross_entropy` over the
  full fp32 logits, with a lower peak of live tensor memory (torch profiler).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import zstandard
from conftest import CORPORA

import tinyllama.model as M
from tinyllama.model import (
    Documents,
    ModelConfig,
    build_model,
    chunked_cross_entropy,
    document_ids_from_tokens,
    hf_config,
    hf_state_dict,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
BOS, EOS = 1, 2
T = 96
CFG = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, max_seq_len=T)


# ---- document ids ------------------------------------------------------------------------


def test_document_ids_from_markers():
    x = torch.tensor([[7, 8, 2, 1, 9, 9, 2, 1, 5], [9, 2, 1, 4, 2, 1, 1, 3, 3]])
    # BOS and EOS: `</s><s>` is one border; a window starting mid-document is document 0
    assert document_ids_from_tokens(x, BOS, EOS).tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 2, 2],
        [0, 0, 1, 1, 1, 2, 3, 3, 3],
    ]
    # BOS only: a document starts at each BOS
    assert document_ids_from_tokens(x, BOS, None).tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 2, 2],
        [0, 0, 1, 1, 1, 2, 3, 3, 3],
    ]
    # EOS only (`A </s> B </s>`): a document starts right after each EOS
    y = torch.tensor([4, 5, 2, 6, 2, 2, 7])
    assert document_ids_from_tokens(y, None, EOS).tolist() == [0, 0, 0, 1, 1, 2, 3]
    # no markers: one document
    assert document_ids_from_tokens(y).tolist() == [0] * 7


def test_positions_restart_per_document():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 3, 3, 3, 3, 5, 5, 5]])
    d = Documents.build(ids, "sdpa")
    assert d.positions.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 0, 1, 2]]
    # a run of equal ids is a document: row 1's second `5` run does not see its first
    m = d.sdpa_mask[1, 0]
    assert m[6, 0].item() is False and m[6, 6].item() is True and m[5, 2].item() is True
    assert m[2, 3].item() is False  # not in the future
    f = Documents.build(ids, "flash")
    assert f.cu_seqlens.tolist() == [0, 3, 5, 9, 11, 15, 18]


# ---- parity with transformers on real documents -----------------------------------------


def real_documents(n: int) -> list[str]:
    """The first SlimPajama and SkyPile documents of the slice (English and Chinese)."""
    docs = []
    path = sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst"))[0]
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).splitlines()
    docs += [json.loads(line)["text"] for line in lines[: n // 2]]
    with open(CORPORA / "skypile" / "2023-01.jsonl", encoding="utf-8") as f:
        docs += [json.loads(next(f))["text"] for _ in range(n - len(docs))]
    return docs


@pytest.fixture(scope="module")
def stream(hf_tokenizer) -> torch.Tensor:
    """`<s> doc </s>` for real documents of varied lengths, concatenated as the mix packs them.
    Documents are cut to 5..60 tokens so that a T=96 window holds several."""
    lengths = [20, 5, 37, 60, 12, 44, 8, 30, 51, 16]
    ids = []
    for text, n in zip(real_documents(len(lengths)), lengths):
        ids += [BOS, *hf_tokenizer.encode(text, add_special_tokens=False).ids[:n], EOS]
    return torch.tensor(ids)


def windows(stream: torch.Tensor, starts: list[int]) -> torch.Tensor:
    return torch.stack([stream[s : s + T] for s in starts])


@pytest.fixture(scope="module")
def models():
    transformers = pytest.importorskip("transformers")
    ours = build_model(CFG, seed=3).eval()
    hc = {k: v for k, v in hf_config(CFG).items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hc, attn_implementation="sdpa")).eval()
    hf.load_state_dict(hf_state_dict(ours), strict=True)
    return ours, hf


def fragments(doc_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of equal ids."""
    cuts = [0] + [i for i in range(1, len(doc_row)) if doc_row[i] != doc_row[i - 1]] + [len(doc_row)]
    return list(zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_each_document_matches_transformers_alone(stream, models, kernel):
    ours, hf = models
    # row 0: a document starts at 0; row 1: the window begins mid-document (inside the 3rd);
    # row 2: begins on an EOS (a 1-token fragment, then `<s>`); row 3: deep in the stream
    bos_at = (stream == BOS).nonzero().flatten().tolist()
    starts = [0, bos_at[2] + 7, bos_at[4] - 1, bos_at[6] + 3]
    x = windows(stream, starts)
    doc = document_ids_from_tokens(x, BOS, EOS)
    ours.attention_kernel = kernel
    try:
        with torch.no_grad():
            packed = ours(x, doc)
            plain = ours(x)
    finally:
        ours.attention_kernel = "auto"
    checked = 0
    for b in range(len(starts)):
        frags = fragments(doc[b])
        assert len(frags) >= 3  # several documents per window, mid-window starts included
        for s, e in frags:
            with torch.no_grad():
                alone = hf(x[b : b + 1, s:e], use_cache=False).logits[0]
            torch.testing.assert_close(packed[b, s:e], alone, rtol=0, atol=1e-4)
            checked += e - s
        # and without document ids, a later document does see the earlier ones (the oracle can tell)
        s, e = frags[-1]
        assert not torch.allclose(plain[b, s:e], packed[b, s:e], atol=1e-3)
    assert checked == len(starts) * T


def test_eos_only_packing_matches_transformers(stream, models):
    """A mix that stores only EOS: `A </s> B </s>`; B starts right after A's EOS."""
    ours, hf = models
    no_bos = stream[stream != BOS]
    x = windows(no_bos, [0, 41])
    doc = document_ids_from_tokens(x, None, EOS)
    with torch.no_grad():
        packed = ours(x, doc)
    for b in range(2):
        for s, e in fragments(doc[b]):
            with torch.no_grad():
                alone = hf(x[b : b + 1, s:e], use_cache=False).logits[0]
            torch.testing.assert_close(packed[b, s:e], alone, rtol=0, atol=1e-4)


def test_one_document_is_the_plain_causal_path(stream, models):
    ours, _ = models
    x = windows(stream, [3, 50])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, torch.zeros_like(x)), ours(x), rtol=0, atol=1e-5)


def test_document_loss_does_not_depend_on_its_neighbours(stream):
    """One document's per-token loss (and its gradient) in two different packings."""
    model = build_model(CFG, seed=5)
    bos_at = (stream == BOS).nonzero().flatten().tolist()
    doc_b = stream[bos_at[3] : bos_at[4]]  # `<s> ... </s>` of the 4th document
    others = [stream[bos_at[1] : bos_at[2]], stream[bos_at[4] + 3 : bos_at[5]]]  # whole / a fragment
    losses, grads = [], []
    for before in others:
        assert len(before) + len(doc_b) < T
        seq = torch.cat([before, doc_b, stream[: T + 1]])[: T + 1][None]
        x, y = seq[:, :-1], seq[:, 1:]
        s = len(before)
        model.zero_grad()
        ce = model(x, document_ids_from_tokens(x, BOS, EOS), targets=y)
        # the document's own predictions: its tokens up to (not including) its EOS as inputs
        mine = ce[0, s : s + len(doc_b) - 1]
        mine.sum().backward()
        losses.append(mine.detach())
        grads.append(model.layers[0].self_attn.qkv_proj.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ---- kernels -----------------------------------------------------------------------------


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=None, enable_gqa=None):
    """A per-document stand-in for the CUDA varlen kernels (flash-attn's and torch's): each
    document [cu[i], cu[i+1]) of the flat batch is attended causally on its own."""
    assert causal or window_size == (-1, 0)
    assert cu_q.dtype == torch.int32 and max_q >= int((cu_q[1:] - cu_q[:-1]).max())
    rep = q.shape[1] // k.shape[1]
    out = []
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qq, kk, vv = (t[s:e].transpose(0, 1) for t in (q, k, v))
        kk, vv = kk.repeat_interleave(rep, 0), vv.repeat_interleave(rep, 0)
        out.append(F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).transpose(0, 1))
    return torch.cat(out)


def test_all_cpu_kernels_agree_forward_and_backward(stream, monkeypatch):
    """SDPA (mask), the varlen glue (flash-attn's and torch's call, cu_seqlens) driven by the
    per-document reference, and FlexAttention: same logits; same gradients where the kernel
    has a CPU backward (FlexAttention's backward is CUDA-only: forward compared here)."""
    monkeypatch.setattr(M, "flash_attn_varlen_func", reference_varlen)
    monkeypatch.setattr(M, "varlen_attn", reference_varlen)
    bos_at = (stream == BOS).nonzero().flatten().tolist()
    x = windows(stream, [0, bos_at[2] + 7, bos_at[5]])
    y = windows(stream, [1, bos_at[2] + 8, bos_at[5] + 1])
    doc = document_ids_from_tokens(x, BOS, EOS)
    results = {}
    for kernel in ("sdpa", "flash", "varlen"):
        for ac in (False, True):
            model = build_model(CFG, seed=4)
            model.attention_kernel = kernel
            model.activation_checkpointing = ac
            logits = model(x, doc)
            F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
            results[kernel, ac] = (logits.detach(), [p.grad for p in model.parameters()])
    ref_logits, ref_grads = results["sdpa", False]
    for key, (logits, grads) in results.items():
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5, msg=f"{key}")
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=f"{key}")
    model = build_model(CFG, seed=4).eval()
    model.attention_kernel = "flex"
    with torch.no_grad():
        torch.testing.assert_close(model(x, doc), ref_logits, rtol=0, atol=1e-5)


def test_kernel_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert M.attention_kernel(cpu, torch.float32) == "sdpa"
    assert M.attention_kernel(cpu, torch.bfloat16) == "sdpa"
    assert M.attention_kernel(cpu, torch.float32, "flex") == "flex"
    expect_bf16 = "flash" if M.flash_attn_varlen_func else "varlen" if M.varlen_attn else "flex"
    assert M.attention_kernel(cuda, torch.bfloat16) == expect_bf16
    assert M.attention_kernel(cuda, torch.float32) == ("flex" if M.flex_attention else "sdpa")


# ---- chunked cross-entropy ---------------------------------------------------------------


def _inputs(n=300, d=48, vocab=1000, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(vocab, d, generator=g) * 0.2).to(dtype).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, t


@pytest.mark.parametrize("chunk", [64, 97, 300, 1000])
def test_chunked_cross_entropy_equals_unchunked(chunk):
    h, w, t = _inputs()
    t[::7] = -100  # ignored positions: no loss, no gradient
    gl = torch.rand(t.shape, generator=torch.Generator().manual_seed(1))  # any upstream gradient
    ref = F.cross_entropy(F.linear(h, w).float(), t, reduction="none")
    (ref * gl).sum().backward()
    ref_h, ref_w = h.grad, w.grad
    h.grad = w.grad = None
    loss = chunked_cross_entropy(h, w, t, chunk=chunk)
    (loss * gl).sum().backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    assert loss[::7].eq(0).all()
    torch.testing.assert_close(h.grad, ref_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad, ref_w, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_bf16_autocast():
    """Under autocast the head matmul runs in bf16 as `lm_head` would: same loss and grads as
    the unchunked bf16 logits, within bf16 rounding (the chunked weight grad rounds once)."""
    h, w, t = _inputs(n=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), t, reduction="none")
    ref.mean().backward()
    ref_h, ref_w = h.grad, w.grad
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(h, w, t, chunk=64)
    loss.mean().backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    # exact gradients of the same bf16-rounded matmul, in fp64: both sides are a few bf16 ulps off
    h64, w64 = (a.detach().bfloat16().double().requires_grad_() for a in (h, w))
    F.cross_entropy(F.linear(h64, w64), t, reduction="none").mean().backward()
    for ours, theirs, exact in ((h.grad, ref_h, h64.grad), (w.grad, ref_w, w64.grad)):
        err, ref_err = (ours - exact).norm() / exact.norm(), (theirs - exact).norm() / exact.norm()
        assert err < 8e-3 and ref_err < 8e-3  # bf16: 2^-8 relative per rounding
        assert err < 2 * ref_err + 1e-3


def test_model_loss_equals_cross_entropy_of_logits(stream):
    x, y = windows(stream, [0, 40]), windows(stream, [1, 41])
    doc = document_ids_from_tokens(x, BOS, EOS)
    grads = []
    for chunked in (False, True):
        model = build_model(CFG, seed=6)
        model.loss_chunk = 50
        if chunked:
            ce = model(x, doc, targets=y)
        else:
            ce = F.cross_entropy(model(x, doc).float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        ce.mean().backward()
        grads.append((ce.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def peak_live_bytes(fn) -> int:
    """Peak of CPU tensor memory allocated while fn runs (net of frees), from the profiler's
    allocation records: each carries the allocator's running total since profiling began."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    totals = [
        n.typed[1].total_allocated
        for n in walk(prof.profiler.kineto_results.experimental_event_tree())
        if n.tag.name == "Allocation"
    ]
    assert totals, "the profiler recorded no allocations"
    return max(totals)


def test_chunked_cross_entropy_peak_memory_is_lower():
    n, d, vocab = 2048, 64, 8000  # full fp32 logits: 65.5 MB; a 256-token chunk: 8.2 MB
    h, w, t = _inputs(n, d, vocab)

    def unchunked():
        F.cross_entropy(F.linear(h, w).float(), t, reduction="none").mean().backward()

    def chunked():
        chunked_cross_entropy(h, w, t, chunk=256).mean().backward()

    full = n * vocab * 4
    a, b = peak_live_bytes(unchunked), peak_live_bytes(chunked)
    assert a >= full  # the oracle does hold the full logits
    assert b < full / 2 < a
    assert b < a / 3


# ---- the GPU benchmark's CPU dry run -----------------------------------------------------


@pytest.mark.slow  # ~40 s on 2 cores: five variants, two of them traced by torch.compile
def test_gpu_benchmark_dry_run():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for row in ("transformers", "tinyllama", "masked", "compiled"):
        assert row in out, out
    assert "vs transformers" in out
