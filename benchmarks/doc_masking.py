"""CPU figures for document-masked packing and the chunked loss.

1. Training-step time (forward + backward) of a small model on one packed batch, with document
   masking (`document_ids`: SDPA with a block-diagonal causal mask, RoPE per document) and
   without (one causal sequence), same weights and tokens; steps interleaved A/B/B/A...,
   median (robust to load from other processes).
2. Peak memory of the loss (forward + backward) at vocab 32000 x seq 2048: unchunked
   `F.cross_entropy(F.linear(h, W).float(), ...)` vs `chunked_cross_entropy`, measured as the
   peak of CPU tensor memory allocated during the call (torch profiler allocation records),
   next to the analytic size of the full fp32 logits.

    python benchmarks/doc_masking.py [--layers 4 --hidden 256 --seq 512 --batch 4 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import BOS, EOS, M, packed_batch  # noqa: E402  (model.py loaded without the extension)


def step_times(a) -> dict:
    cfg = M.ModelConfig(n_layer=a.layers, n_embd=a.hidden, n_head=a.heads, n_kv_head=a.kv_heads,
                        intermediate_size=a.inter, vocab_size=32000, max_seq_len=a.seq)
    model = M.build_model(cfg, seed=0)
    tokens = packed_batch(a.batch, a.seq, cfg.vocab_size, a.mean_doc)
    x, y = tokens[:, :-1], tokens[:, 1:]
    doc = M.document_ids_from_tokens(x, BOS, EOS)
    sides = {"plain": None, "masked": doc}

    def step(d):
        t0 = time.perf_counter()
        model(x, d, targets=y).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for d in sides.values():  # warm-up
        step(d)
    times = {k: [] for k in sides}
    for i in range(a.steps):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for k in order:
            times[k].append(step(sides[k]))
    n_docs = int((x == BOS).sum())
    return {"cfg": cfg, "docs": n_docs, "median": {k: statistics.median(v) for k, v in times.items()}}


def peak_allocated(fn) -> int:
    """Peak of CPU tensor memory allocated while fn runs (net of frees)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    return max(n.typed[1].total_allocated for n in walk(prof.profiler.kineto_results.experimental_event_tree())
               if n.tag.name == "Allocation")


def loss_memory(a) -> list[tuple[str, int]]:
    g = torch.Generator().manual_seed(0)
    n, vocab = a.loss_tokens, 32000
    h = torch.randn(n, a.loss_hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, a.loss_hidden, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)

    def unchunked():
        F.cross_entropy(F.linear(h, w).float(), t, reduction="none").mean().backward()
        h.grad = w.grad = None

    rows = [("unchunked F.cross_entropy(logits.float())", peak_allocated(unchunked))]
    for chunk in a.chunks:
        def chunked(chunk=chunk):
            M.chunked_cross_entropy(h, w, t, chunk=chunk).mean().backward()
            h.grad = w.grad = None

        rows.append((f"chunked_cross_entropy(chunk={chunk})", peak_allocated(chunked)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=704)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mean-doc", type=int, default=150, help="mean document length in the packed batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-tokens", type=int, default=2048)
    ap.add_argument("--loss-hidden", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 512, 1024])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} threads; "
          f"torch {torch.__version__}")

    r = step_times(a)
    c = r["cfg"]
    print(f"\nfwd+bwd step, {c.n_layer} layers x {c.n_embd} hidden, vocab {c.vocab_size}, batch {a.batch} x "
          f"{a.seq}, {r['docs']} documents (mean {a.mean_doc} tokens), median of {a.steps} interleaved steps, fp32")
    plain, masked = r["median"]["plain"], r["median"]["masked"]
    print(f"  {'no masking (one causal sequence)':<40}{plain * 1e3:>9.1f} ms")
    print(f"  {'document masking (SDPA + mask)':<40}{masked * 1e3:>9.1f} ms   {masked / plain:.2f}x")

    full = a.loss_tokens * 32000 * 4
    print(f"\nloss fwd+bwd at vocab 32000 x {a.loss_tokens} tokens, hidden {a.loss_hidden}, fp32 "
          f"(full fp32 logits: {full / 1e6:.0f} MB)\n  peak = what the call allocates, grads of h and W included")
    rows = loss_memory(a)
    base = rows[0][1]
    for name, peak in rows:
        print(f"  {name:<45}{peak / 1e6:>9.0f} MB   {peak / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
