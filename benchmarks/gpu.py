"""One-shot GPU check: training-step throughput, MFU and peak memory of the 1.1B model.

On one GPU, in bf16 autocast (fp32 master weights, fused AdamW: what `tinyllama train` does on a
single GPU), at seq 2048, on one packed batch of documents:

    transformers   LlamaForCausalLM, attn_implementation="sdpa", loss over its fp32 logits
    tinyllama      ours, one causal sequence per window (TinyLlama's packing)
    masked         ours with document_ids (attention within documents, RoPE restarting)
    ... compiled   the same with every block compiled (as `run.compile = true` does)
    ... float8     the blocks' Linear layers in float8 (torchao, tensorwise dynamic scaling, as
                   `run.float8 = true` does; needs torchao and compute capability 8.9+)

Ours computes the loss with `targets=` (chunked cross-entropy: no full fp32 logits). MFU counts
`ModelConfig.flops_per_token` (attention in full, no causal or document discount) for every
row against the bf16 peak (float8 rows too, as OLMo-core and torchtitan report them), so the
rows compare tokens/s. Ratios are against transformers measured in the same run; the float8
rows also print their ratio to the same row in bf16.

Needs only torch (and transformers for its row): no network, no Rust toolchain; tinyllama's
model.py is loaded by path when the package (its Rust extension) is not installed.

    python benchmarks/gpu.py                   # on a GPU, under 8 minutes including compiles
    python benchmarks/gpu.py --dry-run         # the same code on CPU with a tiny config (<1 min)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS = 1, 2
# Dense bf16 peak FLOP/s (tinyllama/train/metrics.py's table; importing it needs the built package).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def load_model_module():
    try:
        import tinyllama.model as model

        return model
    except ImportError:  # no built extension here: model.py is pure Python (torch only)
        spec = importlib.util.spec_from_file_location("tinyllama_model", ROOT / "tinyllama" / "model.py")
        model = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = model  # dataclasses look their module up
        spec.loader.exec_module(model)
        return model


M = load_model_module()


def packed_batch(batch: int, seq: int, vocab: int, mean_doc: int, seed: int = 0) -> torch.Tensor:
    """[batch, seq + 1] windows cut from a stream of `<s> doc </s>` with random tokens and
    exponentially distributed document lengths (mean `mean_doc`): a packed mix's shape."""
    g = torch.Generator().manual_seed(seed)
    need, parts = batch * (seq + 1), []
    while need > 0:
        n = max(1, int(torch.empty(1).exponential_(1 / mean_doc, generator=g)))
        parts += [torch.tensor([BOS]), torch.randint(3, vocab, (n,), generator=g), torch.tensor([EOS])]
        need -= n + 2
    return torch.cat(parts)[: batch * (seq + 1)].view(batch, seq + 1)


def float8_ok(device: torch.device) -> bool:
    """torchao importable, and float8 tensor cores (a dry run on CPU emulates them)."""
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for k, f in PEAK_BF16_FLOPS.items() if k in name), None)


def to_float8(model, emulate: bool) -> None:
    """`run.float8`'s conversion (tinyllama/train/float8.py): the blocks' Linear layers only."""
    import dataclasses

    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = dataclasses.replace(Float8LinearConfig.from_recipe_name("tensorwise"), emulate=emulate)
    convert_to_float8_training(model, config=config, module_filter_fn=lambda m, fqn: (
        fqn.startswith("layers.") and m.in_features % 16 == 0 and m.out_features % 16 == 0))


def run_variant(name: str, a, cfg, tokens: torch.Tensor, device: torch.device) -> dict:
    """Build, warm up (compiles happen here), then time `a.steps` training steps."""
    masked = "masked" in name
    compiled = "compiled" in name
    f8 = "float8" in name
    torch.manual_seed(0)
    ours = M.build_model(cfg, device=device, seed=0)
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    doc = M.document_ids_from_tokens(x, BOS, EOS) if masked else None
    if name == "transformers":
        from transformers import LlamaConfig, LlamaForCausalLM

        hc = {k: v for k, v in M.hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**hc, attn_implementation="sdpa"))
        model.load_state_dict(M.hf_state_dict(ours), strict=True)
        del ours

        def loss_fn():
            logits = model(input_ids=x, use_cache=False).logits
            return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

        kernel = "sdpa"
    else:
        model = ours
        if f8:  # before compile, as the trainer does; emulated on the CPU of a dry run
            to_float8(model, emulate=device.type != "cuda")
        if compiled:
            for block in model.layers:
                block.compile(backend=a.backend)
        kernel = M.attention_kernel(device, torch.bfloat16) if masked else "causal"

        def loss_fn():
            return model(x, doc, targets=y).mean()

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        loss = step()
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    out = {
        "variant": name,
        "kernel": kernel,
        "step_s": dt,
        "tokens_per_s": x.numel() / dt,
        "peak_mem_gb": None if peak is None else peak / 1e9,
        "warmup_s": warm_s,
        "loss": float(loss.detach()),
    }
    return out  # the model, its optimizer and activations go with this frame


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny config: checks the code path, fast")
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (the trainer's micro_batch)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mean-doc", type=int, default=600, help="mean document length in the packed batch")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend for the compiled rows")
    ap.add_argument("--variants", default="transformers,tinyllama,masked,compiled,masked compiled,"
                                          "float8 compiled,masked float8 compiled")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    if a.dry_run:
        device = torch.device("cpu")
        cfg = M.ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176,
                            vocab_size=512, max_seq_len=128)
        a.batch, a.seq, a.steps, a.warmup, a.mean_doc = 2, 128, 2, 1, 30
        a.backend = "aot_eager"  # dynamo + AOT autograd traced as on a GPU, without C++ codegen
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device (use --dry-run to check the code on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        cfg = M.ModelConfig.from_name(a.model)
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg.max_seq_len = max(cfg.max_seq_len, a.seq)
    tokens = packed_batch(a.batch, a.seq, cfg.vocab_size, a.mean_doc)
    n_docs = int((tokens[:, :-1] == BOS).sum())
    names = [v.strip() for v in a.variants.split(",")]
    names = [("tinyllama " + n if n.startswith(("masked", "compiled", "float8")) else n) for n in names]
    if any("float8" in n for n in names) and not float8_ok(device):
        print("float8 rows left out: they need torchao and a GPU with float8 tensor cores (compute capability "
              "8.9+)", file=sys.stderr)
        names = [n for n in names if "float8" not in n]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{where}; torch {torch.__version__}; {a.model if not a.dry_run else 'tiny'} "
          f"({cfg.num_params() / 1e6:,.1f}M params); batch {a.batch} x {a.seq}; {n_docs} documents; "
          f"bf16 autocast, fwd+bwd+AdamW; {a.steps} timed steps after {a.warmup} warm-up")
    t_all = time.perf_counter()
    rows = []
    for name in names:
        rows.append(run_variant(name, a, cfg, tokens, device))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r = rows[-1]
        print(f"  done {name}: {r['tokens_per_s']:,.0f} tok/s (warm-up {r['warmup_s']:.1f} s)", flush=True)
    peak = peak_flops(device)
    fpt = cfg.flops_per_token(a.seq)
    ref = next((r for r in rows if r["variant"] == "transformers"), None)
    print()
    print(f"{'variant':<34}{'kernel':>8}{'tokens/s':>12}{'MFU':>8}{'peak GB':>10}{'loss':>9}"
          f"{'tok/s vs transformers':>24}{'mem vs transformers':>21}")
    for r in rows:
        r["mfu"] = None if peak is None else r["tokens_per_s"] * fpt / peak
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}"
        speed = "-" if ref is None else f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
        memr = "-" if ref is None or ref["peak_mem_gb"] is None else f"{r['peak_mem_gb'] / ref['peak_mem_gb']:.2f}x"
        print(f"{r['variant']:<34}{r['kernel']:>8}{r['tokens_per_s']:>12,.0f}{mfu:>8}{mem:>10}{r['loss']:>9.3f}"
              f"{speed:>24}{memr:>21}")
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        base = by_name.get(r["variant"].replace(" float8", ""))
        if "float8" in r["variant"] and base is not None:
            print(f"{r['variant']}: {r['tokens_per_s'] / base['tokens_per_s']:.2f}x the tokens/s of {base['variant']}")
    total = time.perf_counter() - t_all
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\ntotal {total:.0f} s; process peak RSS {rss:.1f} GB")
    if a.json:
        a.json.write_text(json.dumps({"device": where, "rows": rows, "total_s": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
