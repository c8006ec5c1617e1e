"""CPU training-step throughput: tinyllama's Llama vs transformers' LlamaForCausalLM.

Same config, same weights, same batch, same loss (fp32 cross-entropy over the logits), same
AdamW step. Each side runs in its own fresh subprocess (so peak RSS is its own), alternating
A/B/A/B, and the best repeat of each is reported. Token ids are drawn from a seeded generator:
a training step's cost does not depend on which ids it sees.

    python benchmarks/train_step.py [--layers 4 --hidden 256 --seq 256 --batch 8 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(impl: str, a: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    from tinyllama.model import ModelConfig, build_model, hf_config, hf_state_dict

    cfg = ModelConfig(n_layer=a.layers, n_embd=a.hidden, n_head=a.heads, n_kv_head=a.kv_heads,
                      intermediate_size=a.inter, vocab_size=a.vocab, max_seq_len=a.seq)
    ours = build_model(cfg, seed=0)
    if impl == "tinyllama":
        model, fwd = ours, ours
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hc = {k: v for k, v in hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
        model = LlamaForCausalLM(LlamaConfig(**hc, attn_implementation="sdpa"))
        model.load_state_dict(hf_state_dict(ours), strict=True)
        del ours

        def fwd(x):
            return model(input_ids=x, use_cache=False).logits

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g) for _ in range(4)]
    losses, times = [], []
    for i in range(a.warmup + a.steps):
        x = batches[i % len(batches)]
        t = time.perf_counter()
        logits = fwd(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    steady = times[a.warmup:]
    return {"impl": impl, "tokens_per_s": a.batch * a.seq * len(steady) / sum(steady),
            "step_s": sum(steady) / len(steady), "first_loss": losses[0], "last_loss": losses[-1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--only", choices=["tinyllama", "transformers"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.only:
        print(json.dumps(run_one(a.only, a)))
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(a.threads)}
    best: dict[str, dict] = {}
    for _ in range(a.repeats):
        for impl in ("tinyllama", "transformers"):
            r = subprocess.run([sys.executable, __file__, "--only", impl] + sys.argv[1:], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{impl} run failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if impl not in best or res["tokens_per_s"] > best[impl]["tokens_per_s"]:
                best[impl] = res
    print(f"config: {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} kv, inter {a.inter}, "
          f"vocab {a.vocab}; batch {a.batch} x seq {a.seq}; {a.threads} threads; fp32")
    for impl, r in best.items():
        print(f"  {impl:13s} {r['tokens_per_s']:10,.0f} tokens/s  step {r['step_s'] * 1e3:7.1f} ms  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB  loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")
    ratio = best["tinyllama"]["tokens_per_s"] / best["transformers"]["tokens_per_s"]
    print(f"  ratio tinyllama / transformers: {ratio:.2f}x")
    same = abs(best["tinyllama"]["first_loss"] - best["transformers"]["first_loss"]) < 1e-3
    print(f"  same first-step loss: {same}")


if __name__ == "__main__":
    main()
