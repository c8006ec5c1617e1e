"""The loss curve of a run: `RUN/metrics.jsonl` -> a PNG (matplotlib, headless Agg backend).

Top panel: the training loss per logged step, and each corpus' loss (`loss/NAME`) when the run
logged it; bottom panel: the learning rate. The x axis is the optimizer step;
the tokens seen at the last step are in the x label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tinyllama.errors import InputError


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The step records of a metrics.jsonl (or of a run dir holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no metrics (train first)") from None
    records = []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError as e:
            raise InputError(f"{path}:{i}: not JSON: {e}") from None
        if "step" in rec and "loss" in rec:
            records.append(rec)
    if not records:
        raise InputError(f"{path}: no logged steps")
    return records


def plot_loss(metrics: str | os.PathLike[str], out: str | os.PathLike[str], title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics)
    steps = [r["step"] for r in recs]
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    marker = "o" if len(recs) <= 30 else None
    ax.plot(steps, [r["loss"] for r in recs], color="black", lw=2, marker=marker, ms=3, label="loss")
    corpora = sorted({k for r in recs for k in r if k.startswith("loss/")})
    for key in corpora:
        pts = [(r["step"], r[key]) for r in recs if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, alpha=0.8, label=key[len("loss/") :])
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or f"training loss ({Path(metrics)})", fontsize=10)
    if all("lr" in r for r in recs):
        ax_lr.plot(steps, [r["lr"] for r in recs], color="tab:blue")
    ax_lr.set_ylabel("lr")
    # Not a tokens axis: the batch size changes with the schedule (the cooldown's is 4x).
    tokens = recs[-1].get("tokens")
    ax_lr.set_xlabel("step" + (f"  ({_human(tokens)} tokens at step {steps[-1]})" if tokens else ""))
    ax_lr.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.0f}P"
