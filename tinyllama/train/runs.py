"""`tinyllama runs DIR...`: a family of runs seen together (trunk -> branches).

Each run dir is read, never written: `train-config.json` (its mix, branch and the trunk
checkpoint it branched from), `checkpoints/latest` and `metrics.jsonl`. A run whose
`branched_from` checkpoint lies in another listed run's dir hangs under it; the rest are roots.
`plot_runs` draws every run's training loss and per-corpus validation loss over tokens on one
chart, with each branch point marked.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinyllama.errors import InputError
from tinyllama.train.checkpoint import latest_checkpoint


@dataclass
class RunInfo:
    path: str
    name: str
    branch: str | None  # None: a trunk or a plain run
    parent: str | None  # the run dir it branched from (when that dir is listed, or exists)
    branch_step: int | None  # the step it branched at
    mix: str | None
    step: int | None  # the latest checkpoint's step
    tokens: int | None
    latest: str | None
    loss: float | None  # the last logged training loss
    loss_step: int | None
    val: dict[str, float] = field(default_factory=dict)  # the last validation loss per corpus
    val_step: int | None = None


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill
    return out


def run_info(path: str | os.PathLike[str]) -> RunInfo:
    run = Path(path)
    cfg_path = run / "train-config.json"
    if not cfg_path.is_file():
        raise InputError(f"{run}: not a training run dir (no train-config.json)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    origin = cfg.get("branched_from") or {}
    parent = None
    if origin.get("path"):
        ckpt = Path(origin["path"])
        parent = str((ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent).resolve())
    latest = latest_checkpoint(run / "checkpoints")
    trainer = json.loads((latest / "trainer.json").read_text(encoding="utf-8")) if latest else {}
    recs = _records(run)
    train = [r for r in recs if "loss" in r and r.get("loss") is not None]
    val = [r for r in recs if any(k.startswith("val/loss/") for k in r)]
    return RunInfo(
        path=str(run.resolve()), name=run.name, branch=cfg.get("branch"), parent=parent,
        branch_step=origin.get("step"), mix=cfg.get("mix"),
        step=trainer.get("step"), tokens=trainer.get("tokens"), latest=latest.name if latest else None,
        loss=train[-1]["loss"] if train else None, loss_step=train[-1]["step"] if train else None,
        val={k[len("val/loss/"):]: v for k, v in val[-1].items() if k.startswith("val/loss/")} if val else {},
        val_step=val[-1]["step"] if val else None,
    )


def family_tree(paths: list[str | os.PathLike[str]]) -> list[tuple[int, RunInfo]]:
    """(depth, run) in tree order: each root, then the runs that branched from it, by name."""
    infos = [run_info(p) for p in paths]
    by_path = {i.path: i for i in infos}
    children: dict[str | None, list[RunInfo]] = {}
    for i in infos:
        parent = str(Path(i.parent).resolve()) if i.parent else None
        children.setdefault(parent if parent in by_path else None, []).append(i)
    out: list[tuple[int, RunInfo]] = []

    def walk(key: str | None, depth: int) -> None:
        for i in sorted(children.get(key, []), key=lambda r: (r.branch or "", r.name)):
            out.append((depth, i))
            walk(i.path, depth + 1)

    walk(None, 0)
    return out


def format_tree(tree: list[tuple[int, RunInfo]]) -> str:
    corpora = sorted({c for _, i in tree for c in i.val})
    header = ["run", "branch", "step", "tokens", "latest", "train loss"] + [f"val {c}" for c in corpora]
    trunks = {i.parent for _, i in tree if i.parent}
    rows = []
    for depth, i in tree:
        name = ("  " * (depth - 1) + "└─ " if depth else "") + i.name
        rows.append([name, (i.branch or ("trunk" if i.path in trunks else "-"))
                     + (f" @ {i.branch_step}" if i.branch_step is not None else ""),
                     _n(i.step), _n(i.tokens), i.latest or "-", _f(i.loss)] + [_f(i.val.get(c)) for c in corpora])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) if k < 2 else str(c).rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def tree_json(tree: list[tuple[int, RunInfo]]) -> list[dict]:
    return [{**asdict(i), "depth": d} for d, i in tree]


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def plot_runs(paths: list[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Training loss (top) and per-corpus validation loss (bottom) of every run over tokens
    seen, one color per run, the branch points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree = family_tree(paths)
    trunks = {i.parent for _, i in tree if i.parent}
    fig, (ax, ax_val) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    for k, (_, info) in enumerate(tree):
        recs = _records(Path(info.path))
        if info.parent and info.branch_step is not None:  # start the branch's lines where it left the trunk
            recs = [r for r in _records(Path(info.parent)) if r.get("step") == info.branch_step] + recs
        train = [r for r in recs if r.get("loss") is not None and "tokens" in r]
        if not train:
            continue
        color = f"C{k % 10}"
        label = info.branch or ("trunk" if info.path in trunks else info.name)
        ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=color, lw=1.5, label=label)
        tokens_at = {r["step"]: r["tokens"] for r in train}
        val = [r for r in recs if any(key.startswith("val/loss/") for key in r)]
        corpora = sorted({key for r in val for key in r if key.startswith("val/loss/")})
        for j, key in enumerate(corpora):
            pts = [(tokens_at[r["step"]], r[key]) for r in val if key in r and r["step"] in tokens_at]
            if pts:
                ax_val.plot(*zip(*pts), color=color, ls=styles[j % len(styles)], marker="o", ms=3,
                            label=f"{label}: {key[len('val/loss/'):]}")
        x = _branch_tokens(Path(info.parent), info.branch_step) if info.parent and info.branch_step else None
        if x is not None:
            for a in (ax, ax_val):
                a.axvline(x, color="crimson", lw=1, ls="--")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("the family: training loss, branch points dashed", fontsize=10)
    ax_val.set_ylabel("validation loss per corpus")
    ax_val.set_xlabel("tokens seen")
    ax_val.grid(alpha=0.3)
    if ax_val.lines:
        ax_val.legend(fontsize=7, ncol=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _branch_tokens(parent: Path, step: int) -> float | None:
    """Tokens the parent run had seen at `step` (its metrics), None if it did not log that step."""
    for r in _records(parent):
        if r.get("step") == step and "tokens" in r:
            return r["tokens"]
    return None
