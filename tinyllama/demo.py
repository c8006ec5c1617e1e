"""`tinyllama demo [--out DIR]`: the whole pipeline on the bundled sample data, on a CPU, in the
shape of TinyLlama v1.1: one trunk trained once, three branches that continue it.

    DIR/mix             `mix build` of examples/demo.toml, a family (the real-data slice in
                        python/tests/data: SlimPajama, StarCoder, proof-pile, SkyPile), each corpus once
    DIR/run             the trunk: `train` of examples/train-demo.toml (metrics.jsonl,
                        checkpoints/step-N/), ending at the branch point
    DIR/branches/NAME   each branch (v1_1, math_code, chinese), started from the trunk's checkpoint
    DIR/loss.png        every run's training and validation loss over tokens, branch points marked
    DIR/hf              the v1_1 branch exported to Hugging Face (transformers loads it offline)
    DIR/eval.json       held-out loss per corpus of the trunk and every branch (the table it prints)
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
    from tinyllama.data.mix import Mix
    from tinyllama.eval.generate import Sampling, generate
    from tinyllama.eval.perplexity import eval_runs, format_runs
    from tinyllama.hf import export
    from tinyllama.train import train
    from tinyllama.train.checkpoint import latest_checkpoint
    from tinyllama.train.config import load_config
    from tinyllama.train.plot import read_metrics
    from tinyllama.train.runs import family_tree, format_tree, plot_runs

    root = find_root(root)
    out = Path(out).resolve()
    claim_out_dir(out)
    t0 = time.perf_counter()

    def mark() -> str:
        return f"[{time.perf_counter() - t0:5.1f}s]"


    echo(f"{mark()} 1/6 mix build (a family: each corpus once): {root / 'examples/demo.toml'} -> {out / 'mix'}")
    s = build_mix(root / "examples/demo.toml", out / "mix", workers, progress=False)
    echo(f"{mark()}     {s['docs_kept']:,} docs, {s['tokens']:,} tokens" + (" (up to date)" if s["up_to_date"] else ""))
    branches = Mix(out / "mix").branches()

    def config(run: Path, *extra: str):
        paths = [f"mix={json.dumps(str(out / 'mix'))}", f"out={json.dumps(str(run))}", *extra]
        if max_steps is not None:  # a family's lr spans its branches: end each run early instead
            paths.append(f"run.stop_after={int(max_steps)}")
        return load_config(root / "examples/train-demo.toml", [*paths, *overrides])

    def train_run(cfg, what: str) -> list[dict]:
        resume = latest_checkpoint(Path(cfg.out) / "checkpoints") is not None
        echo(f"{mark()}     {what} -> {cfg.out}" + (" (resuming)" if resume else ""))
        train(cfg, resume=resume)
        m = read_metrics(cfg.out)
        a, b = m[0], m[-1]
        echo(f"{mark()}     loss {a['loss']:.3f} (step {a['step']}) -> {b['loss']:.3f} (step {b['step']})")
        return m

    trunk = config(out / "run")
    echo(f"{mark()} 2/6 train the trunk once: a {trunk.model.num_params() / 1e6:.1f}M-parameter Llama on "
         f"{torch.get_num_threads()} CPU threads")
    metrics = train_run(trunk, "trunk (SlimPajama), to the branch point")
    runs = [out / "run"]
    echo(f"{mark()} 3/6 train each branch from the trunk's checkpoint: {', '.join(branches)}")
    for name in branches:
        run = out / "branches" / name
        train_run(config(run, f"branch={json.dumps(name)}", f"branch_from={json.dumps(str(out / 'run'))}"),
                  f"branch {name}")
        runs.append(run)

    echo(f"{mark()} 4/6 the family's losses -> {out / 'loss.png'}")
    plot_runs(runs, out / "loss.png")
    echo(format_tree(family_tree(runs)))

    main = out / "branches" / ("v1_1" if "v1_1" in branches else branches[0])
    ckpt = latest_checkpoint(main / "checkpoints")
    echo(f"{mark()} 5/6 export {ckpt} -> {out / 'hf'}")
    export(ckpt, out / "hf", force=True)  # the previous run's export, if any, is the demo's own

    echo(f"{mark()} 6/6 generate, and compare the runs on held-out documents")
    sample = generate(out / "hf", prompt, Sampling(max_new_tokens=48, temperature=0.7, top_k=50, top_p=0.95,
                                                    repetition_penalty=1.1, seed=0))
    echo(f"--- sample (temperature 0.7, top-k 50, top-p 0.95) ---\n{sample}\n---")
    results = eval_runs([str(r) for r in runs], out / "mix")
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    echo(format_runs(results))
    result = results[runs.index(main)]
    echo(f"{mark()} done: {out}/{{mix,run,branches,loss.png,hf,eval.json}}")
    return {
        "out": str(out),
        "checkpoint": str(ckpt),
        "first_loss": metrics[0]["loss"],  # the trunk's first step
        "final_loss": read_metrics(main)[-1]["loss"],  # the exported branch's last step
        "runs": [str(r) for r in runs],
        "sample": sample,
        "eval": result,  # the exported branch's held-out losses
        "evals": results,  # every run's
        "seconds": time.perf_counter() - t0,
    }
