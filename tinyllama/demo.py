"""`tinyllama demo [--out DIR]`: the whole pipeline on the bundled sample data, on a CPU.

    DIR/mix        `mix build` of examples/demo.toml (the real-data slice in python/tests/data)
    DIR/run        `train` of examples/train-demo.toml: metrics.jsonl, checkpoints/step-N/
    DIR/loss.png   the loss curve
    DIR/hf         the exported Hugging Face model (transformers loads it offline)
    DIR/eval.json  held-out perplexity per corpus
and a generated sample on stdout. Rerunning resumes: the mix build and the training pick up
where they stopped, the later steps are redone.

The sample data and the example configs live in the repository, not in the wheel: run the demo
from a clone (or pass `root`, the directory holding examples/ and python/tests/data).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from tinyllama.errors import SpecError, StorageError

PROMPT = "The history of the"


def find_root(root: str | os.PathLike[str] | None = None) -> Path:
    cands = [Path(root)] if root is not None else [Path(__file__).resolve().parents[1], Path.cwd()]
    for c in cands:
        if (c / "examples/demo.toml").is_file() and (c / "examples/train-demo.toml").is_file():
            return c.resolve()
    raise SpecError(
        f"the demo needs examples/demo.toml, examples/train-demo.toml and the sample data in "
        f"python/tests/data (looked in {', '.join(str(c) for c in cands)}): run it from a clone "
        f"of the repository"
    )


MARKER = "tinyllama-demo.json"  # marks a dir the demo made (a rerun resumes in it)


def claim_out_dir(out: Path) -> None:
    """`out` must be new, empty, or a previous demo's dir: the demo never writes into (or
    replaces anything in) a directory it did not make."""
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out}: exists and is not a directory; demo refused")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise StorageError(f"{out}: not empty and not a previous demo dir; demo refused (nothing was changed): "
                           f"choose a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"format": "tinyllama-demo"}) + "\n", encoding="utf-8")
    except OSError as e:
        raise StorageError(f"{out}: cannot create the demo dir: {e.strerror or e}") from None


def run_demo(
    out: str | os.PathLike[str] = "demo-out",
    max_steps: int | None = None,
    workers: int | None = None,
    root: str | os.PathLike[str] | None = None,
    prompt: str = PROMPT,
    overrides: list[str] | tuple[str, ...] = (),
    echo: Callable[[str], None] = print,
) -> dict:
    """Run every stage; returns a summary (paths, final loss, perplexities, the sample).
    `overrides` are train-config `--set KEY=VALUE`s on top of examples/train-demo.toml
    (e.g. `model="tiny"` for a faster run); `max_steps` is `run.max_steps`."""
    import torch

    from tinyllama.data.build import build_mix
    from tinyllama.eval.generate import Sampling, generate
    from tinyllama.eval.perplexity import evaluate, format_table
    from tinyllama.hf import export, load_model
    from tinyllama.train import train
    from tinyllama.train.checkpoint import latest_checkpoint
    from tinyllama.train.config import load_config
    from tinyllama.train.plot import plot_loss, read_metrics

    root = find_root(root)
    out = Path(out).resolve()
    claim_out_dir(out)
    t0 = time.perf_counter()

    def mark() -> str:
        return f"[{time.perf_counter() - t0:5.1f}s]"


    echo(f"{mark()} 1/5 mix build: {root / 'examples/demo.toml'} -> {out / 'mix'}")
    s = build_mix(root / "examples/demo.toml", out / "mix", workers, progress=False)
    echo(f"{mark()}     {s['docs_kept']:,} docs, {s['tokens']:,} tokens" + (" (up to date)" if s["up_to_date"] else ""))

    paths = [f"mix={json.dumps(str(out / 'mix'))}", f"out={json.dumps(str(out / 'run'))}"]
    if max_steps is not None:
        paths.append(f"run.max_steps={int(max_steps)}")
    cfg = load_config(root / "examples/train-demo.toml", [*paths, *overrides])
    resume = latest_checkpoint(out / "run/checkpoints") is not None
    echo(f"{mark()} 2/5 train: {cfg.run.max_steps or 'all'} steps of a {cfg.model.num_params() / 1e6:.1f}M-parameter "
         f"Llama on {torch.get_num_threads()} CPU threads -> {out / 'run'}" + (" (resuming)" if resume else ""))
    train(cfg, resume=resume)
    metrics = read_metrics(out / "run")
    echo(f"{mark()}     loss {metrics[0]['loss']:.3f} (step {metrics[0]['step']}) -> "
         f"{metrics[-1]['loss']:.3f} (step {metrics[-1]['step']})")

    echo(f"{mark()} 3/5 loss curve -> {out / 'loss.png'}")
    plot_loss(out / "run", out / "loss.png", title=f"tinyllama demo: {cfg.model.num_params() / 1e6:.1f}M parameters")

    ckpt = latest_checkpoint(out / "run/checkpoints")
    echo(f"{mark()} 4/5 export {ckpt} -> {out / 'hf'}")
    export(ckpt, out / "hf", force=True)  # the previous run's export, if any, is the demo's own

    echo(f"{mark()} 5/5 generate and evaluate")
    sample = generate(out / "hf", prompt, Sampling(max_new_tokens=48, temperature=0.7, top_k=50, top_p=0.95,
                                                    repetition_penalty=1.1, seed=0))
    echo(f"--- sample (temperature 0.7, top-k 50, top-p 0.95) ---\n{sample}\n---")
    result = evaluate(load_model(out / "hf"), out / "mix")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    echo(format_table(result))
    echo(f"{mark()} done: {out}/{{mix,run,loss.png,hf,eval.json}}")
    return {
        "out": str(out),
        "checkpoint": str(ckpt),
        "first_loss": metrics[0]["loss"],
        "final_loss": metrics[-1]["loss"],
        "sample": sample,
        "eval": result,
        "seconds": time.perf_counter() - t0,
    }
