"""Training metrics: `out/metrics.jsonl` (one JSON object per logged step), TensorBoard events
when `tensorboard` is importable, and a progress line on a terminal. Rank 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

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
    def __init__(self, out: str | os.PathLike[str], enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.tb = None
        self.tty = sys.stderr.isatty()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                str(Path(out) / "tb"), purge_step=resume_step + 1 if resume_step else None
            )
        except (ImportError, AttributeError, TypeError):  # no (usable) tensorboard: JSONL only
            self.tb = None
        self.start = time.time()

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (the run repeats those steps)."""
        if not self.path.is_file():
            return
        if step == 0:
            keep = []
        else:
            keep = [
                ln
                for ln in self.path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step
            ]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, record: dict, total_steps: int) -> None:
        if not self.enabled:
            return
        record = {
            k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v)
            for k, v in record.items()
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
        mfu = f" mfu {record['mfu'] * 100:.1f}%" if record.get("mfu") is not None else ""
        line = (
            f"step {record['step']}/{total_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"gnorm {record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s{mfu}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line)
            if record["step"] >= total_steps:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\n" if self.tty else "") + text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
