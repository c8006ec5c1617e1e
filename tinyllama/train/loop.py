"""The trainer: `tinyllama train --config FILE [--resume] [--set key=value ...]`.

One optimizer step at schedule step `s`:
  1. the mix gives this rank its contiguous slice of the global batch at `s`
     (`batch_sequences(s)` sequences in all; the cooldown stage quadruples it);
  2. the slice is cut into micro-batches of `micro_batch` sequences, so the number of
     accumulation steps = batch_sequences(s) / (world * micro_batch) follows the schedule;
  3. each micro-batch's loss is computed in fp32 by the model's chunked cross-entropy (the full
     fp32 logits never exist) and scaled so the summed gradient is the mean over the global
     batch's sequences of each sequence's mean token loss (FSDP averages the ranks' gradients);
     with `run.document_masking` (the default) every document of a packed window attends only
     to itself, its RoPE positions restart at 0, and no position is scored on the first token
     of the next document (`document_targets`);
  4. clip, AdamW step at the cosine learning rate of step `s` (which ignores batch-size changes).

Because the data is a pure function of the step and everything else is in the checkpoint, a
resumed run repeats an uninterrupted one exactly, on any world size. SIGTERM / SIGUSR1 (Slurm's
warning before a time limit or a preemption) end the run after the current step with a
checkpoint (`preempt.py`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tinyllama import fault
from tinyllama.errors import CheckpointError, SpecError, TinyllamaError, TrainingError
from tinyllama.model import Llama, build_model, document_ids_from_tokens
from tinyllama.train import float8
from tinyllama.train.async_checkpoint import in_flight_saves
from tinyllama.train.checkpoint import Checkpointer, latest_checkpoint, mix_identity, resolve
from tinyllama.train.config import TrainConfig, load_config
from tinyllama.train.family import Family, branch_origin, family_of, fetch_branch_from
from tinyllama.train.guard import Guard
from tinyllama.train.metrics import MetricsLogger, MetricsWindow
from tinyllama.train.optim import anneal_lr, build_optimizer, lr_at
from tinyllama.train.out_dir import lock_out_dir
from tinyllama.train.parallel import (
    Dist,
    all_reduce_sum,
    collective_failure,
    decided_by_main,
    init_distributed,
    parallelize,
    set_train_timeout,
    shutdown,
)
from tinyllama.train.preempt import StopOnSignal
from tinyllama.train.progress import close_all
from tinyllama.train.trackers import open_run_log


class BatchSource(Protocol):
    """What the trainer needs from a data source (`tinyllama.Mix` is one)."""

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, list[str]]: ...

    def num_steps(self) -> int: ...

    def batch_sequences(self, step: int) -> int: ...


# Llama 2's tokenizer (TinyLlama's, and every named model's vocabulary): <s> = 1, </s> = 2.
LLAMA_MARKERS = (1, 2)


def document_markers(source) -> tuple[int | None, int | None]:
    """The (BOS, EOS) ids that delimit the documents packed in `source`'s windows: the source's
    own `bos_id` / `eos_id` attributes when it has them; else its lock's (a built mix records
    each, null when the spec's add_bos / add_eos left it out); else, for a stand-in source that
    says nothing, Llama 2's <s> = 1 and </s> = 2 (the tokenizer the named models are built for)."""
    if hasattr(source, "bos_id") or hasattr(source, "eos_id"):
        return getattr(source, "bos_id", None), getattr(source, "eos_id", None)
    lock = getattr(source, "lock", None)
    if lock:
        return lock.get("bos_id"), lock.get("eos_id")
    return LLAMA_MARKERS


def document_targets(x: torch.Tensor, bos_id: int | None, eos_id: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(document ids [B, T], targets [B, T]) of windows `x` [B, T + 1] of packed documents.

    The ids are `document_ids_from_tokens` of the inputs `x[:, :-1]` (a new document at each BOS,
    right after each EOS, and at the first token of the row). The targets are `x[:, 1:]`, with
    -100 (no loss) where the target is the first token of the next document: masked attention
    shows that position only its own document, so the token it would be scored on belongs to
    an unrelated one. With EOS-only packing (`A </s> B`) that is the point: `</s>` would be
    asked for B's first token knowing only A, a loss that depends on which document happens to
    follow, so a document's loss would not be its own. With BOS stored (`A </s><s> B`) the
    dropped target is the `<s>` after `</s>`, always the same token: nothing is lost. Either
    way every document is scored on exactly its own tokens after its first, as `tinyllama
    eval` scores a held-out document, whatever shares its window; and the model still learns
    to end a document (the position before `</s>` is scored).
    """
    # The ids of the first T tokens do not depend on token T, so one pass over all T + 1 gives
    # both the inputs' ids and, one position on, whether each target starts a new document.
    doc = document_ids_from_tokens(x, bos_id, eos_id)
    targets = x[:, 1:].masked_fill(doc[:, 1:] != doc[:, :-1], -100)
    return doc[:, :-1], targets


def loss_targets(x: torch.Tensor, document_masking: bool, markers: tuple[int | None, int | None]
                 ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """What `train_step` feeds the model for windows `x` [B, T + 1]: (document ids or None,
    targets [B, T], scored positions per row or None = all T). A sequence's loss is the mean
    of its scored positions' losses: `model(x[:, :-1], doc, targets=y).sum(1) / counted`."""
    if not document_masking:  # TinyLlama's packing: one causal sequence per row, every position scored
        return None, x[:, 1:], None
    # On the device, for the whole slice at once: compares, a shift and a cumsum over
    # [B, T + 1] ints. Measured on a CPU: 0.2 ms for 8 x 2049 tokens, 0.04 % of the step of a
    # 2-layer, 64-wide test model; not worth moving into the Rust loader.
    doc, y = document_targets(x, *markers)
    return doc, y, (y != -100).sum(1).clamp(min=1)


def open_data(cfg: TrainConfig) -> BatchSource:
    """The train config's mix: a family's branch `cfg.branch`, else its trunk (or a plain mix)."""
    import tinyllama

    cache = {"cache_dir": cfg.mix_cache, "cache_bytes": cfg.mix_cache_bytes or None}  # a mix in a bucket
    if cfg.branch is None:
        return tinyllama.Mix(cfg.mix, **cache)
    try:
        return tinyllama.Mix(cfg.mix, branch=cfg.branch, **cache)
    except SpecError as e:
        raise SpecError(f"{cfg.source}: key 'branch': {e}") from None


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


def train_step(model, opt, tokens: np.ndarray, cfg: TrainConfig, d: Dist, amp,
               markers: tuple[int | None, int | None] = LLAMA_MARKERS, check=None, nonfinite: bool = False) -> dict:
    """One optimizer step on this rank's slice `tokens` [n_local, seq_len + 1]. `markers` are
    the (BOS, EOS) ids that delimit documents (`document_markers`), read when
    `run.document_masking` is on. `check(loss, grad_finite)` (the guard's verdict on the
    global batch's mean loss) returns None to apply the update, else why not; by default only
    a non-finite gradient norm is refused. The result's "why" is None when it was applied.
    `nonfinite` (a test hook, `fault.nonfinite`) makes this step's loss NaN."""
    mb = cfg.micro_batch
    n_local = tokens.shape[0]
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
    if n_local % mb:
        raise RuntimeError(f"the data source gave {n_local} sequences, not a multiple of micro_batch {mb}")
    doc, y, counted = loss_targets(x, cfg.run.document_masking, markers)
    hsdp = d.mesh is not None and d.mesh.ndim == 2
    seq_losses = []
    for i in range(accum):
        if hsdp:  # reduce-scatter within the node every micro-step, all-reduce across nodes once
            model.set_requires_all_reduce(i == accum - 1)
        rows = slice(i * mb, (i + 1) * mb)
        with amp:
            # per-token fp32 loss [mb, seq_len], 0 where the target is -100
            ce = model(x[rows, :-1], None if doc is None else doc[rows], targets=y[rows])
        seq_loss = ce.mean(1) if counted is None else ce.sum(1) / counted[rows]
        if nonfinite:
            seq_loss = seq_loss * float("nan")
        (seq_loss.sum() / n_local).backward()  # mean over this rank's sequences; FSDP averages ranks
        seq_losses.append(seq_loss.detach())
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    # A non-finite loss anywhere makes the (global) gradient norm non-finite: such an update is
    # never applied; nor one the guard refuses. The check costs one host sync and one scalar
    # all-reduce per step, small next to a step's compute.
    losses = torch.cat(seq_losses)
    loss = float(all_reduce_sum(losses.sum().double().reshape(1))) / (n_local * d.world)
    finite = bool(torch.isfinite(grad_norm))
    why = check(loss, finite) if check is not None else (None if finite else "the gradient norm is not finite")
    if why is None:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"seq_losses": losses, "grad_norm": grad_norm.detach(), "loss": loss, "why": why, "applied": why is None}


def init_model_and_optimizer(
    cfg: TrainConfig, d: Dist
) -> tuple[Llama, torch.optim.Optimizer, contextlib.AbstractContextManager]:
    """The model built on the meta device, parallelized, materialised on the device and
    initialised; AdamW over it; the autocast context of a micro-step."""
    bf16 = cfg.run.precision == "bf16"
    fsdp = {}

    def prepare(model: Llama) -> None:
        if cfg.run.float8:  # before compile and FSDP; refused in one line where the device cannot
            float8.apply(model, cfg, d)
        fsdp["bf16"] = parallelize(model, d, compile=cfg.run.compile,
                                   activation_checkpointing=cfg.run.activation_checkpointing, bf16=bf16)

    model = build_model(cfg.model, d.device, seed=cfg.run.seed, prepare=prepare)
    fsdp_bf16 = fsdp["bf16"]
    opt = build_optimizer(model, cfg.optim, d.device)
    if cfg.run.float8:
        float8.after_each_step(model, opt, d)
    amp = (torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 and not fsdp_bf16
           else contextlib.nullcontext())
    return model, opt, amp


# ---- before the loop: every check that does not depend on the step ---------------------------


@dataclass
class Plan:
    total: int  # steps of the lr schedule
    end: int  # this invocation stops after step `end - 1`
    mix: dict | None  # the mix's identity, recorded in checkpoints (None for a stand-in source)
    cfg: TrainConfig | None = None
    # an annealing branch: {"path", "step", "lr", "steps"} of the parent checkpoint it decays from
    annealed_from: dict | None = None
    # a family run: where it stands (train/family.py), and the trunk checkpoint a branch starts from
    family: Family | None = None
    branched_from: dict | None = None

    def lr(self, step: int) -> float:
        a = self.annealed_from
        if a:
            return anneal_lr(step, self.cfg, a["step"], a["lr"], a["steps"])
        return lr_at(step, self.cfg, self.total, self.family.lr_family if self.family else None)

    @property
    def origin(self) -> Path | None:
        """The other run's checkpoint this run started from (an anneal's parent, a branch's
        trunk): where a rewind goes while this run has no checkpoint of its own."""
        o = self.annealed_from or self.branched_from
        return Path(o["path"]) if o else None

    def trainer_state(self) -> dict:
        """What every checkpoint of this run records of where it came from."""
        return {"annealed_from": self.annealed_from, "branch": self.family.branch if self.family else None,
                "branched_from": self.branched_from}


def anneal_origin(cfg: TrainConfig, resume: bool, anneal_from: str | None, anneal_steps: int) -> dict | None:
    """Where an annealing branch starts (`--anneal-from CKPT --anneal-steps N`): the parent
    checkpoint's path, step and lr; on `--resume` of a branch, what its train-config.json
    recorded. None for an ordinary run."""
    if resume:
        if anneal_from:
            raise SpecError("--anneal-from starts a new run dir; --resume continues one (its anneal included)")
        recorded = Path(cfg.out) / "train-config.json"
        return json.loads(recorded.read_text(encoding="utf-8")).get("annealed_from") if recorded.is_file() else None
    if not anneal_from:
        if anneal_steps:
            raise SpecError("--anneal-steps needs --anneal-from CKPT")
        return None
    if anneal_steps <= 0:
        raise SpecError(f"--anneal-steps must be > 0, got {anneal_steps}")
    path = resolve(Path(anneal_from))
    trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    if trainer.get("lr") is None:
        raise CheckpointError(f"{path}: trainer.json records no lr to anneal from (not a training checkpoint?)")
    return {"path": str(path.resolve()), "step": int(trainer["step"]), "lr": float(trainer["lr"]),
            "steps": anneal_steps}


def preflight(cfg: TrainConfig, source: BatchSource, d: Dist, origin: dict | None = None) -> Plan:
    """The config checked against the data source once: step counts, vocabulary, sequence
    length, held-out documents for validation and the micro-batch split of every stage's
    global batch."""
    family = family_of(cfg, source)
    total = family.horizon if family else (cfg.run.max_steps or source.num_steps())
    if origin:  # an annealing branch: N steps on from its parent's step, whatever max_steps says
        total = origin["step"] + origin["steps"]
        if total > source.num_steps():
            raise SpecError(f"--anneal-steps {origin['steps']}: from step {origin['step']} the branch would end "
                            f"after the mix's schedule of {source.num_steps()} steps")
    if total > source.num_steps() and not family:
        raise SpecError(
            f"{cfg.source}: key 'run.max_steps': {total} steps exceed the mix's schedule of "
            f"{source.num_steps()} steps (0 = the whole schedule)"
        )
    if cfg.run.eval_every and not hasattr(source, "documents"):
        raise SpecError(f"{cfg.source}: key 'run.eval_every': the data source ({type(source).__name__}) has no "
                        f"held-out documents; validation needs a built mix (or set run.eval_every = 0)")
    last = min(total, source.num_steps())  # a family's trunk ends at the branch point
    end = min(last, cfg.run.stop_after) if cfg.run.stop_after else last
    lock = getattr(source, "lock", None)
    if lock and int(lock.get("vocab_size", 0)) > cfg.model.vocab_size:
        raise SpecError(
            f"{cfg.source}: key 'model.vocab_size' = {cfg.model.vocab_size} is smaller than the vocabulary "
            f"of the mix's tokenizer ({lock['vocab_size']}, {cfg.mix}): token ids would fall outside the embedding"
        )
    seq_len = getattr(source, "seq_len", None)
    if seq_len is not None and seq_len > cfg.model.max_seq_len:
        raise SpecError(
            f"{cfg.source}: key 'model.max_seq_len': the mix's sequences have {seq_len} tokens, "
            f"more than max_seq_len={cfg.model.max_seq_len}"
        )
    # The global batch only changes at stage boundaries; a stand-in source without stages is
    # checked step by step.
    steps = [first for first, _ in source.sampler.stage_steps()] if hasattr(source, "sampler") else range(end)
    for step in steps:
        if step >= end:
            continue
        n_global = source.batch_sequences(step)
        if n_global % (d.world * cfg.micro_batch):
            raise SpecError(
                f"{cfg.source}: key 'micro_batch': the global batch at step {step} is {n_global} "
                f"sequences, not divisible by world size {d.world} x micro_batch {cfg.micro_batch}"
            )
    return Plan(total=total, end=end, mix=mix_identity(lock) if lock else None, cfg=cfg, annealed_from=origin,
                family=family)


# ---- the loop ---------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, source: BatchSource | None = None,
          allow_mix_change: bool = False, anneal_from: str | None = None, anneal_steps: int = 0) -> Path:
    """Run (or resume) training; returns the out dir. Works alone or under torchrun. The out
    dir is locked for the whole run: a second process on it is refused before it changes
    anything. `anneal_from` / `anneal_steps`: a new run that branches from another run's
    checkpoint and decays the lr to `min_lr` over that many steps (`anneal_origin`)."""
    torch.set_float32_matmul_precision("high")
    origin = anneal_origin(cfg, resume, anneal_from, anneal_steps)
    d = init_distributed()
    try:
        with lock_out_dir(cfg.out, d), StopOnSignal() as stop, in_flight_saves():
            data = source if source is not None else open_data(cfg)
            return _train(cfg, resume, data, d, stop, allow_mix_change, origin)
    except RuntimeError as e:
        what = collective_failure(e, d)  # another rank gone (socket closed) or silent past the timeout
        if what is None:
            raise
        last = latest_checkpoint(Path(cfg.out) / "checkpoints")
        raise TrainingError(
            f"after step {d.step}: a collective with the other ranks failed ({what}): a rank or node is gone, or "
            f"stalled past run.train_timeout_s; the last committed checkpoint is {last.name if last else 'none'}: "
            f"restart every rank with --resume"
        ) from None
    finally:
        close_all()  # a progress bar an error left on screen
        if d.owns_group:
            shutdown()


class Validation:
    """`run.eval_every`: the held-out loss per corpus (`eval.perplexity.evaluate`, sharded over
    the ranks), every N steps and at the last step, in the training precision: under `amp`, the
    micro-steps' autocast context (under FSDP's bf16 policy the forwards are bf16 already)."""

    def __init__(self, cfg: TrainConfig, source, d: Dist, amp=None):
        self.every, self.source, self.d, self.batch = cfg.run.eval_every, source, d, cfg.micro_batch
        self.amp = amp if amp is not None else contextlib.nullcontext()

    def due(self, step: int, end: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == end)

    def __call__(self, model, step: int) -> dict:
        from tinyllama.eval.perplexity import evaluate, validation_record

        with self.amp:
            result = evaluate(model, self.source, batch_size=self.batch, rank=self.d.rank, world=self.d.world,
                              all_reduce_sum=all_reduce_sum)
        return {"step": step, **validation_record(result)}


def _start(ckpts: Checkpointer, plan: Plan, model, opt, resume: bool, allow_mix_change: bool) -> tuple[int, int]:
    if resume:
        ckpts.fetch_from_bucket()  # run.upload_to and no local checkpoint: the bucket's newest
        step, tokens = ckpts.restore(model, opt, plan.mix, allow_mix_change)
        if ckpts.trainer is not None or not plan.branched_from:
            return step, tokens
        # a branch killed before its first checkpoint: it starts from its trunk again
    if plan.branched_from:
        path = Path(plan.branched_from["path"])
        step, tokens = ckpts.load_origin(path, model, opt, plan.mix, allow_mix_change)
        ckpts.notes.append(f"branch {plan.family.branch}: starting from the trunk's {path} (step {step}; branch "
                           f"point: step {plan.family.branch_step})")
        return step, tokens
    if plan.annealed_from:
        step, tokens = ckpts.load_origin(Path(plan.annealed_from["path"]), model, opt, plan.mix, allow_mix_change)
        ckpts.notes.append(f"annealing from {plan.annealed_from['path']} (step {step}, lr "
                           f"{plan.annealed_from['lr']:.3g}) to {ckpts.cfg.optim.min_lr:.3g} over "
                           f"{plan.annealed_from['steps']} steps")
        return step, tokens
    return 0, 0


def _train(cfg: TrainConfig, resume: bool, source: BatchSource, d: Dist, stop: StopOnSignal,
           allow_mix_change: bool, origin: dict | None = None) -> Path:
    plan = preflight(cfg, source, d, origin)
    if not resume:
        fetch_branch_from(cfg, d)  # a bucket URL: each out dir's keeper fetches it into out/.branch_from first
    # rank 0's out dir records it (train-config.json): the one view, when the nodes do not share out
    plan.branched_from = decided_by_main(lambda: branch_origin(cfg, plan.family, plan.mix, resume))
    ckpts = Checkpointer(Path(cfg.out) / "checkpoints", cfg, d)
    if not resume:
        ckpts.refuse_existing()
    ckpts.claim_bucket(resume)  # run.upload_to: this run's lease on the prefix
    try:
        markers = document_markers(source)
        model, opt, amp = init_model_and_optimizer(cfg, d)
        step, tokens_seen = _start(ckpts, plan, model, opt, resume, allow_mix_change)
        guard, validate = Guard(cfg), Validation(cfg, source, d, amp)
        guard.load(ckpts.trainer)
        ckpts.clean_partial()  # by each out dir's keeper
        if d.is_main:
            (Path(cfg.out) / "train-config.json").write_text(
                json.dumps({**cfg.to_dict(), **plan.trainer_state()}, indent=1), encoding="utf-8")
        d.barrier()
        log = open_run_log(cfg, plan, source, d, step, tokens_seen, resume)  # metrics.jsonl, trackers, step line
        ckpts.say = log.message
        for line in ckpts.notes:
            log.message(line)
        if cfg.run.document_masking and markers == (None, None):
            log.message("run.document_masking: the data stores neither BOS nor EOS, so no document borders can be "
                        "found: each window is one sequence, as with document_masking = false")
        window = MetricsWindow(cfg, d)
        model.train()
        stopping = False
        while step < plan.end and not stopping:
            for tokens, corpora in iter_batches(source, step, plan.end, d):
                n_global, lr = source.batch_sequences(step), plan.lr(step)
                if guard.skips(step):
                    log.event({"step": step, "event": "skip", "lr": lr})
                else:
                    for g in opt.param_groups:
                        g["lr"] = lr
                    r = train_step(model, opt, tokens, cfg, d, amp, markers, check=guard.verdict,
                                   nonfinite=fault.nonfinite(step))
                    if r["why"] is not None:
                        step, tokens_seen = _rewind(step, r, guard, ckpts, model, opt, plan, log, window, source)
                        break
                    guard.applied(r["loss"])
                    tokens_seen += n_global * (tokens.shape[1] - 1)
                    window.add(r, corpora, n_global, tokens.shape[1] - 1)
                step += 1
                d.step = step
                fault.reached("step")
                set_train_timeout(d, cfg.run.train_timeout_s)  # once, after the first step
                if window and (step % cfg.run.log_every == 0 or step == plan.end):
                    log.log(window.flush(step, lr, tokens_seen, n_global), plan.end)
                if validate.due(step, plan.end):
                    log.event(validate(model, step))
                    window.restart_clock()
                stopping = stop.requested(d)
                ckpts.poll(model, opt)  # run.async_checkpoint: a save written on its thread says when it is committed
                if ckpts.due(step, plan.end, stopping):
                    ckpts.save(step, model, opt, {
                        "tokens": tokens_seen, "total_steps": plan.total, "lr": lr, "config": cfg.to_dict(),
                        "mix": plan.mix, "document_masking": cfg.run.document_masking, "guard": guard.state(),
                        **plan.trainer_state()})
                    window.restart_clock()  # do not count the save in tokens/s
                if stopping:
                    ckpts.wait()
                    log.message(f"stopped by {stop.name()} after step {step}: checkpoint saved, rerun with --resume")
                    break
    except BaseException:
        ckpts.release_lease()  # a failed run gives the prefix up at once (nothing in flight is awaited)
        raise
    ckpts.close()  # the last upload done, the lease released
    log.close()
    return Path(cfg.out)


def _rewind(step: int, r: dict, guard: Guard, ckpts: Checkpointer, model, opt, plan: Plan, log: MetricsLogger,
            window: MetricsWindow, source: BatchSource) -> tuple[int, int]:
    """The guard refused step `step`: without a guard, stop as before; with one, put the step on
    the skip list (or stop after too many in a row) and go back to the last checkpoint."""
    if not guard.enabled:
        raise TrainingError(
            f"step {step}: the loss or gradient norm is not finite (grad norm {float(r['grad_norm'])}); the "
            f"update was not applied and the run stopped. Last good checkpoint: {ckpts.latest_name()} "
            f"(lower optim.lr or raise optim.warmup_steps, then --resume)"
        )
    guard.rewound(step, r["why"])  # raises after too many in a row
    back, tokens = ckpts.rewind(model, opt, plan.mix, plan.origin, ckpts.cfg.run.seed)
    guard.load(ckpts.trainer, keep_skips=True)  # the history as of that checkpoint, the skips learnt since
    window.discard()
    log.rewind_to(back)
    docs = skipped_documents(source, step)
    log.event({"step": step, "event": "rewind", "why": r["why"], "bad_loss": r["loss"],
               "grad_norm": float(r["grad_norm"]), "to": f"step-{back}" if back else "init", "skip": guard.skip,
               **({"documents": docs} if docs else {})})
    if docs:
        shown = ", ".join(f"{d['corpus']} {d['source']}:{d['row']}" for d in docs[:5])
        log.message(f"step {step} skipped; its batch holds {len(docs)} document fragments: {shown}"
                    + (", ..." if len(docs) > 5 else "") + f" (all: tinyllama mix trace MIX --step {step})")
    fault.reached("rewind")
    return back, tokens


def skipped_documents(source: BatchSource, step: int) -> list[dict]:
    """The input records of the global batch at `step` (corpus, file, row), for the guard's
    messages; empty for a source that cannot trace (a stand-in without a built mix)."""
    if not hasattr(source, "trace"):
        return []
    df = source.trace(step)
    return df.select("corpus", "source", "row").unique(maintain_order=True).to_dicts()


def train_main(config_path: str, resume: bool = False, overrides: Sequence[str] = (),
               allow_mix_change: bool = False, anneal_from: str | None = None, anneal_steps: int = 0) -> None:
    """Entry point for the CLI: `tinyllama train --config FILE [--resume] [--set k=v ...]
    [--anneal-from CKPT --anneal-steps N]`."""
    cfg = load_config(config_path, overrides)
    train(cfg, resume=resume, allow_mix_change=allow_mix_change, anneal_from=anneal_from, anneal_steps=anneal_steps)


def main(argv: Sequence[str] | None = None) -> None:
    """`torchrun -m tinyllama.train CONFIG [--resume] [--set k=v]`: errors a user can cause
    are one line on stderr (prefixed with the rank under torchrun) and exit status 1."""
    import argparse
    import os

    ap = argparse.ArgumentParser(prog="python -m tinyllama.train")
    ap.add_argument("config")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--allow-mix-change", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    try:
        train_main(a.config, a.resume, a.overrides, a.allow_mix_change)
    except TinyllamaError as e:
        rank = os.environ.get("RANK")
        sys.stderr.write(f"error{f' (rank {rank})' if rank else ''}: {e}\n")
        sys.exit(1)

