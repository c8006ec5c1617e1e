"""CPU training-step throughput: tinyllama's Llama vs transformers' LlamaForCausalLM.

Same config, same weights, same batch, same loss (fp32 cross-entropy over the logits), same
AdamW step. Throughput: both models in one process, steps interleaved A/B/B/A..., median step
time (robust to load from other processes). Peak RSS: each side alone in a fresh subprocess.
Token ids are drawn from a seeded generator: a step's cost does not depend on the ids.
CPU use = (user + sys CPU seconds of the process, all threads, over a side's steps) / their wall
time / cores.

    python benchmarks/train_step.py [--layers 4 --hidden 256 --seq 256 --batch 8 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _data import cpu_use  # noqa: E402


def make(impl: str, a: argparse.Namespace):
    """(model, forward) for one implementation, with the same weights on both sides."""
    from tinyllama.model import ModelConfig, build_model, hf_config, hf_state_dict

    cfg = ModelConfig(
        n_layer=a.layers,
        n_embd=a.hidden,
        n_head=a.heads,
        n_kv_head=a.kv_heads,
        intermediate_size=a.inter,
        vocab_size=a.vocab,
        max_seq_len=a.seq,
    )
    ours = build_model(cfg, seed=0)
    if impl == "tinyllama":
        return ours, ours
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = {k: v for k, v in hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = LlamaForCausalLM(LlamaConfig(**hc, attn_implementation="sdpa"))
    model.load_state_dict(hf_state_dict(ours), strict=True)
    return model, lambda x: model(input_ids=x, use_cache=False).logits


class Side:
    """One implementation's model + AdamW; `step` runs one timed training step."""

    def __init__(self, impl: str, a: argparse.Namespace):
        import torch

        self.impl = impl
        self.model, self.fwd = make(impl, a)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        self.times, self.cpu, self.losses = [], [], []

    def step(self, x) -> None:
        import torch.nn.functional as F

        c, t = time.process_time(), time.perf_counter()
        logits = self.fwd(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        self.losses.append(loss.item())


def batches(a: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g) for _ in range(4)]


def peak_rss(impl: str, a: argparse.Namespace) -> float:
    """Peak RSS (MB) of a fresh process doing 3 training steps with one implementation."""
    import torch

    torch.set_num_threads(a.threads)
    side = Side(impl, a)
    for x in batches(a)[:3]:
        side.step(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(a: argparse.Namespace) -> dict[str, Side]:
    """Both implementations in one process, steps interleaved A/B/A/B so that load from other
    processes on the machine hits both sides alike."""
    import torch

    torch.set_num_threads(a.threads)
    sides = {impl: Side(impl, a) for impl in ("tinyllama", "transformers")}
    bs = batches(a)
    for i in range(a.warmup + a.steps):
        order = list(sides.values()) if i % 2 == 0 else list(sides.values())[::-1]
        for side in order:
            side.step(bs[i % len(bs)])
    for side in sides.values():
        side.times, side.cpu = side.times[a.warmup :], side.cpu[a.warmup :]
    return sides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--only", choices=["tinyllama", "transformers"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.only:
        print(json.dumps({"peak_rss_mb": peak_rss(a.only, a)}))
        return

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": str(a.threads),
    }
    rss = {}
    for impl in ("tinyllama", "transformers"):
        r = subprocess.run(
            [sys.executable, __file__, "--only", impl] + sys.argv[1:],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            sys.exit(f"{impl} run failed:\n{r.stderr[-3000:]}")
        rss[impl] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    sides = timed(a)
    tps = {k: a.batch * a.seq / statistics.median(s.times) for k, s in sides.items()}
    print(
        f"config: {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} kv, inter {a.inter}, "
        f"vocab {a.vocab}; batch {a.batch} x seq {a.seq}; {a.threads} threads; fp32; "
        f"median of {a.steps} interleaved steps"
    )
    for impl, s in sides.items():
        print(
            f"  {impl:13s} {tps[impl]:10,.0f} tokens/s  step {statistics.median(s.times) * 1e3:8.1f} ms  "
            f"peak RSS {rss[impl]:7.0f} MB  CPU use {cpu_use(sum(s.cpu), sum(s.times)):>4}  "
            f"loss {s.losses[0]:.4f} -> {s.losses[-1]:.4f}"
        )
    print(f"  ratio tinyllama / transformers (tokens/s, measured in this run): "
          f"{tps['tinyllama'] / tps['transformers']:.2f}x")
    print(f"  CPU use = user + sys CPU seconds over a side's timed steps / their wall time / {os.cpu_count()} cores")
    same = all(abs(x - y) < 1e-3 for x, y in zip(sides["tinyllama"].losses, sides["transformers"].losses))
    print(f"  same losses step by step: {same}")


if __name__ == "__main__":
    main()
