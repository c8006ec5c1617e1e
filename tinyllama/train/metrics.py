"""Training metrics: `out/metrics.jsonl` (one JSON object per logged step), TensorBoard events
when `tensorboard` is importable (the `train` extra installs it), and a progress line on a terminal. Rank 0 only.

Three kinds of line: a step record (has "step" and "loss"); a validation record ("step" and
"val/loss", "val/loss/<corpus>"; `run.eval_every`); an event ("step" and "event": "rewind" or
"skip", from the guard; the step is the 0-based schedule step of the batch, as in `mix trace`).
Readers that want the training curve take the lines with "loss" (`plot.read_metrics`)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from tinyllama import fault

# Dense bf16 peak FLOP/s per GPU, for MFU. Unknown devices (and CPUs) get no MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


class MetricsLogger:
    def __init__(self, out: str | os.PathLike[str], enabled: bool, resume_step: int = 0, progress=None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.tb = None
        self.tensorboard = tensorboard  # `run.trackers` has "tensorboard"
        self.trackers: list = []  # more trackers, each with log(record) and close() (train/trackers.py: W&B)
        self.progress = progress  # the step line / bar (train/progress.py); made at the first record if None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._open_tensorboard(resume_step)
        self.start = time.time()

    def _open_tensorboard(self, after_step: int) -> None:
        """(Re)open the TensorBoard writer; events of steps after `after_step` that an earlier
        writer logged are purged (resume and guard rewinds repeat those steps: without the
        purge TensorBoard would draw them twice)."""
        if self.tb is not None:
            self.tb.close()
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tb"), purge_step=after_step + 1 if after_step else None)
        except (ImportError, AttributeError, TypeError):  # no (usable) tensorboard: JSONL only
            self.tb = None

    def _truncate_after(self, step: int, rewind: bool = False) -> None:
        """On resume (or a guard rewind), drop lines logged after the checkpoint (the run
        repeats those steps, and logs their skips again), and a torn last line (a kill
        mid-write), saying so. Rewind events are kept: they happened, and are not repeated."""
        if not self.path.is_file():
            return
        keep, torn = [], 0
        if step or rewind:
            for n, ln in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not ln.strip():
                    continue
                try:
                    rec = json.loads(ln)
                except ValueError:
                    torn += 1
                    sys.stderr.write(f"{self.path}: line {n} is not valid JSON (torn by a kill?): dropped\n")
                    continue
                if isinstance(rec, dict) and ((rec.get("step") or 0) <= step or rec.get("event") == "rewind"):
                    keep.append(ln)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def _append(self, record: dict, tensorboard: bool, point: str | None = None) -> dict:
        """Append `record` to metrics.jsonl and, with `tensorboard`, its numbers to TensorBoard.
        JSON has no NaN / inf: a non-finite value is written as null (the line stays valid JSON).
        Returns the record as written. `point`: the fault point reached half-way through the line."""
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        line = json.dumps(record, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            if point is not None:  # a torn line on disk when the fault hook aborts here
                f.write(line[: len(line) // 2])
                f.flush()
                fault.reached(point)
                line = line[len(line) // 2 :]
            f.write(line)
        if tensorboard and self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])
        for t in self.trackers:  # every line, events included, at its step (each skips replayed steps)
            t.log(record)
        return record

    def log(self, record: dict, total_steps: int) -> None:
        if not self.enabled:
            return
        record = self._append(record, tensorboard=True, point="metrics")
        if self.progress is None:
            from tinyllama.train.progress import Progress

            self.progress = Progress(total_steps)
        self.progress.update(record)

    def rewind_to(self, step: int) -> None:
        if self.enabled:
            self._truncate_after(step, rewind=True)
            self._open_tensorboard(step)

    def event(self, record: dict) -> None:
        """A line that is not a training step: a validation result or a guard event (also to
        TensorBoard when numeric, and as a message)."""
        if not self.enabled:
            return
        record = self._append(record, tensorboard="event" not in record)
        self.message(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def message(self, text: str) -> None:
        if self.enabled and self.progress is not None:
            self.progress.message(text)  # above the bar on a terminal
        elif self.enabled:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            self.tb.close()


class MetricsWindow:
    """The steps since the last log line: per-sequence losses with their corpus, per-step loss
    sums and gradient norms, tokens and time. `flush` reduces them over the ranks (one
    all-reduce and one all-gather every `log_every` steps, none in between) into the record
    `metrics.jsonl` gets.

    tokens/s (and MFU) cover exactly the steps the record reports: each `add` charges the time
    since the previous mark (the last `add`, `flush` or `restart_clock`) to the step it adds.
    A pause the loop leaves out with `restart_clock` (a checkpoint save, a validation) is thus
    charged to no step, while the steps before it keep their time (a restart that only reset
    the start time dropped those steps' time but kept their tokens, and over-stated the rate
    of the first record after a save)."""

    def __init__(self, cfg, d):
        self.cfg, self.d = cfg, d
        self.peak = cfg.run.peak_tflops * 1e12 if cfg.run.peak_tflops else peak_flops(d.device)
        self.restart_clock()
        self._clear()

    def _clear(self) -> None:
        self.seq_losses: list[torch.Tensor] = []
        self.corpora: list[str] = []
        self.step_sums: list[torch.Tensor] = []
        self.grad_norm = None
        self.tokens = 0
        self.seconds = 0.0  # the time of the steps added since the last flush

    def restart_clock(self) -> None:
        """Start timing the next step from now: what happened since the last mark (a save, a
        validation) is not charged to any step."""
        self.t0 = time.perf_counter()

    def discard(self) -> None:
        """Forget the steps since the last flush (a guard rewind replays them)."""
        self._clear()
        self.restart_clock()

    def __bool__(self) -> bool:
        return bool(self.seq_losses)

    def add(self, result: dict, corpora: list[str], n_global: int, seq_len: int) -> None:
        """One optimizer step: its `train_step` result, this rank's rows' corpora, the global
        batch in sequences and the sequence length."""
        self.seq_losses.append(result["seq_losses"])
        self.corpora.extend(corpora)
        self.step_sums.append(result["seq_losses"].sum())
        self.grad_norm = result["grad_norm"]
        self.tokens += n_global * seq_len
        self.seq_len = seq_len
        now = time.perf_counter()
        self.seconds += now - self.t0
        self.t0 = now

    def flush(self, step: int, lr: float, tokens_seen: int, n_global: int) -> dict:
        from tinyllama.train.parallel import all_gather_objects, all_reduce_sum

        d, cfg = self.d, self.cfg
        losses = torch.cat(self.seq_losses).float().cpu().tolist()
        step_sums = all_reduce_sum(torch.stack(self.step_sums).double())  # per step: the global batch's sum
        gathered = all_gather_objects((self.corpora, losses))
        per_corpus: dict[str, list[float]] = {}
        n_seq = 0
        for names, ls in gathered:
            n_seq += len(ls)
            for name, lv in zip(names, ls):
                per_corpus.setdefault(name, []).append(lv)
        tps = self.tokens / self.seconds if self.seconds > 0 else None
        seq_len = self.seq_len
        rec = {
            "step": step,
            "loss": float(step_sums.sum()) / n_seq,
            "lr": lr,
            "tokens": tokens_seen,
            "tokens_per_s": tps,
            "grad_norm": float(self.grad_norm),
            "mfu": tps * cfg.model.flops_per_token(seq_len) / (self.peak * d.world) if self.peak and tps else None,
            "batch_sequences": n_global,
            "accum_steps": n_global // (d.world * cfg.micro_batch),
            "document_masking": cfg.run.document_masking,  # the setting the losses were computed under
        }
        if d.device.type == "cuda":
            rec["max_memory_gb"] = torch.cuda.max_memory_allocated(d.device) / 2**30
        rec.update({f"loss/{c}": sum(v) / len(v) for c, v in sorted(per_corpus.items())})
        self._clear()
        self.restart_clock()
        return rec
