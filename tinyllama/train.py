"""The trainer: `tinyllama train --config FILE [--resume] [--set key=value ...]`.

One optimizer step at schedule step `s`:
  1. the mix gives this rank its contiguous slice of the global batch at `s`
     (`batch_sequences(s)` sequences in all; the cooldown stage quadruples it);
  2. the slice is cut into micro-batches of `micro_batch` sequences, so the number of
     accumulation steps = batch_sequences(s) / (world * micro_batch) follows the schedule;
  3. each micro-batch's loss is computed in fp32 and scaled so the summed gradient is the mean
     over every token of the global batch (FSDP averages the ranks' gradients);
  4. clip, AdamW step at the cosine learning rate of step `s` (which ignores batch-size changes).

Because the data is a pure function of the step and everything else is in the checkpoint, a
resumed run repeats an uninterrupted one exactly, on any world size. SIGTERM / SIGUSR1 (Slurm's
warning before a time limit or a preemption) end the run after the current step with a
checkpoint (`preempt.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from tinyllama import checkpoint as ckpt
from tinyllama.config import TrainConfig, load_config
from tinyllama.errors import SpecError
from tinyllama.metrics import MetricsLogger, peak_flops
from tinyllama.model import Llama
from tinyllama.parallel import (
    Dist,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
    shard_model,
    shutdown,
)
from tinyllama.preempt import StopOnSignal


class BatchSource(Protocol):
    """What the trainer needs from a data source (`tinyllama.Mix` is one)."""

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, list[str]]: ...

    def num_steps(self) -> int: ...

    def batch_sequences(self, step: int) -> int: ...


def open_data(cfg: TrainConfig) -> BatchSource:
    import tinyllama

    return tinyllama.Mix(cfg.mix)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to `lr`, then cosine to `min_lr` at the last step of the schedule."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    decay_steps = max(1, total_steps - o.warmup_steps)
    ratio = min(1.0, (step - o.warmup_steps) / decay_steps)
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - o.min_lr)


def build(
    cfg: TrainConfig, d: Dist
) -> tuple[Llama, torch.optim.Optimizer, contextlib.AbstractContextManager]:
    """Model built on the meta device, sharded, materialised on the device, initialised."""
    bf16 = cfg.run.precision == "bf16"
    with torch.device("meta"):
        model = Llama(cfg.model)
    model.activation_checkpointing = cfg.run.activation_checkpointing
    if cfg.run.compile:
        for block in model.layers:
            block.compile()  # per block: small graphs, and FSDP hooks stay outside them
    fsdp_mp = bf16 and d.mesh is not None and d.device.type == "cuda"
    if d.mesh is not None:
        shard_model(model, d.mesh, bf16=fsdp_mp)
    model.to_empty(device=d.device)
    model.init_weights(cfg.run.seed)
    # Weight decay on matrices only (not on RMSNorm gains).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=1e-8, fused=d.device.type == "cuda"
    )
    amp = (
        torch.autocast(d.device.type, dtype=torch.bfloat16)
        if bf16 and not fsdp_mp
        else contextlib.nullcontext()
    )
    return model, opt, amp


def iter_batches(source: BatchSource, start: int, end: int, d: Dist):
    """This rank's (tokens, corpora) for steps start, start+1, ... A `tinyllama.Mix` feeds them
    through its zero-copy ring-buffer loader (Rust threads gather ahead of the step; buffers
    page-locked on CUDA); any other source through `batch()`. Both give the same tokens."""
    if hasattr(source, "loader"):
        loader = source.loader(rank=d.rank, world=d.world, start_step=start, end_step=end,
                               pin=d.device.type == "cuda")
        for b in loader:
            yield b.tokens, b.corpora
    else:
        for step in range(start, end):
            yield source.batch(step, d.rank, d.world)


def train_step(model, opt, tokens: np.ndarray, cfg: TrainConfig, d: Dist, amp) -> dict:
    """One optimizer step on this rank's slice `tokens` [n_local, seq_len + 1]."""
    mb = cfg.micro_batch
    n_local, seq_len = tokens.shape[0], tokens.shape[1] - 1
    accum = n_local // mb
    if isinstance(tokens, torch.Tensor):
        # A view of the loader's (page-locked) ring buffer. The copy to the GPU is a fast DMA
        # of ~100 KB; it is synchronous on purpose: the ring may refill this buffer as soon as
        # the view is dropped, so no transfer may still be reading it then.
        x = tokens.to(d.device).long()
    else:
        x = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        if d.device.type == "cuda":
            x = x.pin_memory().to(d.device, non_blocking=True)
    hsdp = d.mesh is not None and d.mesh.ndim == 2
    seq_losses = []
    for i in range(accum):
        if hsdp:  # reduce-scatter within the node every micro-step, all-reduce across nodes once
            model.set_requires_all_reduce(i == accum - 1)
        chunk = x[i * mb : (i + 1) * mb]
        with amp:
            logits = model(chunk[:, :-1])
        ce = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="none")
        seq_loss = ce.view(mb, seq_len).mean(1)
        (seq_loss.sum() / n_local).backward()  # mean over this rank's sequences; FSDP averages ranks
        seq_losses.append(seq_loss.detach())
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"seq_losses": torch.cat(seq_losses), "grad_norm": grad_norm.detach()}


def train(cfg: TrainConfig, resume: bool = False, source: BatchSource | None = None) -> Path:
    """Run (or resume) training; returns the out dir. Works alone or under torchrun."""
    torch.set_float32_matmul_precision("high")
    d = init_distributed()
    try:
        with StopOnSignal() as stop:
            return _train(cfg, resume, source if source is not None else open_data(cfg), d, stop)
    finally:
        if d.owns_group:
            shutdown()


def _train(cfg: TrainConfig, resume: bool, source: BatchSource, d: Dist, stop: StopOnSignal) -> Path:
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    total = cfg.run.max_steps or source.num_steps()
    if total > source.num_steps():
        raise SpecError(
            f"{cfg.source}: key 'run.max_steps': {total} steps exceed the mix's schedule of "
            f"{source.num_steps()} steps (0 = the whole schedule)"
        )
    end = min(total, cfg.run.stop_after) if cfg.run.stop_after else total
    model, opt, amp = build(cfg, d)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(ckpt_dir)
        (out / "train-config.json").write_text(json.dumps(cfg.to_dict(), indent=1), encoding="utf-8")
    d.barrier()

    step, tokens_seen = 0, 0
    last = ckpt.latest_checkpoint(ckpt_dir)
    if last is not None and not resume:
        # Starting over would interleave new checkpoints with the old ones (and keep_last
        # would prune by step number): refuse rather than lose a run.
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints (latest: {last.name}): pass --resume "
            f"to continue that run, or choose another out dir"
        )
    if last is not None:
        state = ckpt.load(last, model, opt, rank=d.rank)
        step, tokens_seen = state["step"], state["tokens"]
    log = MetricsLogger(out, d.is_main, resume_step=step)
    if resume:
        log.message(
            f"resumed from {last}" if last else f"--resume: no checkpoint in {ckpt_dir}, starting fresh"
        )
    peak = peak_flops(d.device)

    window_losses, window_corpora, window_steps, window_tokens = [], [], [], 0
    t0, saved = time.perf_counter(), step
    batches = iter_batches(source, step, end, d)
    model.train()
    while step < end:
        n_global = source.batch_sequences(step)
        if n_global % (d.world * cfg.micro_batch):
            raise SpecError(
                f"{cfg.source}: key 'micro_batch': the global batch at step {step} is {n_global} "
                f"sequences, not divisible by world size {d.world} x micro_batch {cfg.micro_batch}"
            )
        tokens, corpora = next(batches)
        if tokens.shape[1] - 1 > cfg.model.max_seq_len:
            raise SpecError(
                f"{cfg.source}: key 'model.max_seq_len': the mix's sequences have "
                f"{tokens.shape[1] - 1} tokens, more than max_seq_len={cfg.model.max_seq_len}"
            )
        if tokens.shape[0] != n_global // d.world:
            raise RuntimeError(
                f"data source gave {tokens.shape[0]} sequences at step {step}, expected {n_global // d.world}"
            )
        lr = lr_at(step, cfg, total)
        for g in opt.param_groups:
            g["lr"] = lr
        r = train_step(model, opt, tokens, cfg, d, amp)
        step += 1
        seq_len = tokens.shape[1] - 1
        tokens_seen += n_global * seq_len
        window_tokens += n_global * seq_len
        window_losses.append(r["seq_losses"])
        window_corpora.extend(corpora)
        window_steps.append((r["seq_losses"].sum(), r["grad_norm"]))

        if step % cfg.run.log_every == 0 or step == end:
            losses = torch.cat(window_losses).float().cpu().tolist()
            step_sums = torch.stack([s for s, _ in window_steps]).double()
            all_reduce_sum(step_sums)  # per step: sum over the global batch's sequences
            dt = time.perf_counter() - t0
            gathered = all_gather_objects((window_corpora, losses))
            per_corpus: dict[str, list[float]] = {}
            n_seq = 0
            for names, ls in gathered:
                n_seq += len(ls)
                for name, lv in zip(names, ls):
                    per_corpus.setdefault(name, []).append(lv)
            tps = window_tokens / dt
            rec = {
                "step": step,
                "loss": float(step_sums.sum()) / n_seq,
                "lr": lr,
                "tokens": tokens_seen,
                "tokens_per_s": tps,
                "grad_norm": float(window_steps[-1][1]),
                "mfu": tps * cfg.model.flops_per_token(seq_len) / (peak * d.world) if peak else None,
                "batch_sequences": n_global,
                "accum_steps": n_global // (d.world * cfg.micro_batch),
            }
            if d.device.type == "cuda":
                rec["max_memory_gb"] = torch.cuda.max_memory_allocated(d.device) / 2**30
            rec.update({f"loss/{c}": sum(v) / len(v) for c, v in sorted(per_corpus.items())})
            log.log(rec, end)
            window_losses, window_corpora, window_steps, window_tokens = [], [], [], 0
            t0 = time.perf_counter()

        stopping = stop.requested(d)
        if (cfg.run.save_every and step % cfg.run.save_every == 0) or step == end or stopping:
            if step != saved:
                state = {"tokens": tokens_seen, "total_steps": total, "lr": lr, "config": cfg.to_dict()}
                path = ckpt.save(
                    ckpt_dir,
                    step,
                    model,
                    opt,
                    state,
                    rank=d.rank,
                    world=d.world,
                    keep_last=cfg.run.keep_last,
                    barrier=d.barrier,
                )
                saved = step
                log.message(f"saved {path}")
            t0 = time.perf_counter()  # do not count the save in tokens/s
        if stopping:
            log.message(f"stopped by {stop.name()} after step {step}: checkpoint saved, rerun with --resume")
            break
    log.close()
    return out


def train_main(config_path: str, resume: bool = False, overrides: Sequence[str] = ()) -> None:
    """Entry point for the CLI: `tinyllama train --config FILE [--resume] [--set k=v ...]`."""
    cfg = load_config(config_path, overrides)
    train(cfg, resume=resume)


if __name__ == "__main__":  # `torchrun -m tinyllama.train CONFIG [--resume] [--set k=v]`
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tinyllama.train")
    ap.add_argument("config")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    train_main(a.config, a.resume, a.overrides)
