"""How long the step loop stalls for one checkpoint of the 1.1B model with its AdamW state:
synchronous vs asynchronous (`run.async_checkpoint`), on this machine's CPU, one training
process, with each mode's peak RSS.

Each mode runs in a child process of its own (its peak RSS is its own): it builds the model,
gives it AdamW state (as after an optimizer step), then runs a loop of stand-in training steps
(an in-place update of every parameter, a memory pass as an optimizer step is) that calls the
trainer's own `Checkpointer` as the training loop does (`poll` every step, which also has the
host buffers allocated on the writer thread once the optimizer has state), and saves once
(DCP, checksums, rename, `latest`, keep-last) into `--dir`. The steps before the save go on
until those buffers exist (at least `--steps`), as the hundreds of steps before a real run's
first save would. Per mode:

    stall      the loop's time inside the checkpoint calls (save, poll, wait): the whole save
               when synchronous; the copy to host memory (and the commit notice) when not
    committed  from the save call to the checkpoint committed (usable by --resume)
    step       the median stand-in step before the save, and while the write runs (the writer
               thread shares the CPU with the loop)
    RSS        at the save, and the child's peak (asynchronous: the state twice, the model's and
               its host copy)

The ratio printed is the asynchronous stall over the synchronous one (the spec: under 0.2).
A mode whose state does not fit in the memory available is skipped with one line; `--layers`
keeps the 1.1B model's shapes with fewer blocks.

    python benchmarks/checkpoint.py                      # 1.1B + AdamW (13.2 GB; async ~27 GB of RAM)
    python benchmarks/checkpoint.py --layers 8           # the same shapes, 8 of 22 blocks (5.8 GB)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(a) -> dict:
    """One mode, in this process: build, train a little, save once, keep training until committed."""
    import torch

    from tinyllama.model import ModelConfig, build_model
    from tinyllama.train.async_checkpoint import in_flight_saves
    from tinyllama.train.checkpoint import Checkpointer
    from tinyllama.train.parallel import Dist

    torch.set_num_threads(a.threads)
    cfg = ModelConfig.from_name(a.model)
    if a.layers:
        cfg = dataclasses.replace(cfg, n_layer=a.layers)
    nbytes = cfg.num_params() * 4 * 3  # fp32 weights, AdamW's two moments
    need = nbytes * (2 if a.mode == "async" else 1) + (1 << 30)
    avail = mem_available()
    if avail is not None and need > avail:
        return {"mode": a.mode, "skipped": f"needs ~{need / 1e9:.1f} GB of memory, {avail / 1e9:.1f} GB available"}
    model = build_model(cfg, "cpu", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    for p in params:  # the moments, as after a training step (one gradient alive at a time)
        p.grad = torch.zeros_like(p)
        opt.step()
        p.grad = None

    def step() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for p in params:
                p.mul_(0.9999)
        return time.perf_counter() - t

    run = SimpleNamespace(keep_last=1, async_checkpoint=a.mode == "async", save_every=0)
    d = Dist(0, 1, 0, 1, torch.device("cpu"), None)
    ckpts = Checkpointer(Path(a.dir) / "checkpoints", SimpleNamespace(run=run), d)
    said: list[str] = []
    ckpts.say = said.append
    state = {"tokens": 0, "config": {"model": dataclasses.asdict(cfg)}}
    stall = 0.0
    with in_flight_saves():
        before: list[float] = []
        t_warm = time.perf_counter()
        while len(before) < a.steps or (ckpts.writer is not None and ckpts.writer.warming is not None
                                        and not ckpts.writer.warming.done() and len(before) < a.max_steps):
            before.append(step())
            t = time.perf_counter()
            ckpts.poll(model, opt)
            stall += time.perf_counter() - t
        warm_s = time.perf_counter() - t_warm if ckpts.writer is not None else None
        rss_at_save = rss_now()
        t0 = time.perf_counter()
        ckpts.save(a.steps, model, opt, state)
        stall += time.perf_counter() - t0
        done: dict[str, float] = {}
        if ckpts.writer is not None and ckpts.writer.pending is not None:
            ckpts.writer.pending.add_done_callback(lambda _f: done.setdefault("t", time.perf_counter()))
        during = []
        while not said and len(during) < a.max_steps:
            during.append(step())
            t = time.perf_counter()
            ckpts.poll()
            stall += time.perf_counter() - t
        t = time.perf_counter()
        ckpts.wait()
        stall += time.perf_counter() - t
        committed = done.get("t", time.perf_counter()) - t0
    return {
        "mode": a.mode, "state_gb": nbytes / 1e9, "stall_s": stall, "committed_s": committed,
        "step_before_s": statistics.median(before), "step_during_s": statistics.median(during) if during else None,
        "steps_during": len(during), "steps_before": len(before), "warm_s": warm_s, "rss_at_save_gb": rss_at_save,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "params": cfg.num_params(), "layers": cfg.n_layer,
    }


def rss_now() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--layers", type=int, default=0, help="blocks (0 = the model's); the shapes stay the model's")
    ap.add_argument("--modes", default="sync,async")
    ap.add_argument("--steps", type=int, default=3, help="stand-in steps before the save")
    ap.add_argument("--max-steps", type=int, default=1000, help="stand-in steps at most while an async save runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", type=Path, help="where the checkpoints are written (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # a child: run this one mode
    a = ap.parse_args(argv)
    if a.mode:
        print(json.dumps(child(a)))
        return 0
    base = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=a.dir))
    rows = []
    try:
        for mode in [m.strip() for m in a.modes.split(",")]:
            out = base / mode
            cmd = [sys.executable, __file__, "--mode", mode, "--dir", str(out), "--model", a.model,
                   "--layers", str(a.layers), "--steps", str(a.steps), "--max-steps", str(a.max_steps),
                   "--threads", str(a.threads)]
            env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if r.returncode != 0:
                print(f"{mode}: the child failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}",
                      file=sys.stderr)
                return 1
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            shutil.rmtree(out, ignore_errors=True)
            row = rows[-1]
            print(f"  done {mode}: " + (row["skipped"] if "skipped" in row else f"stall {row['stall_s']:.2f} s"),
                  flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ran = [r for r in rows if "skipped" not in r]
    if ran:
        r0 = ran[0]
        what = f"{a.model}" + (f" with {r0['layers']} blocks" if a.layers else "")
        print(f"\n{what}: {r0['params'] / 1e6:,.0f}M params, weights + AdamW = {r0['state_gb']:.1f} GB; CPU, "
              f"{a.threads} threads, one process; torch DCP into {base.parent}")
    print(f"{'mode':<8}{'stall s':>10}{'committed s':>13}{'step s':>9}{'step during':>13}"
          f"{'RSS at save GB':>16}{'peak RSS GB':>13}{'buffers s':>11}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['mode']:<8}  skipped: {r['skipped']}")
            continue
        during = "-" if r["step_during_s"] is None else f"{r['step_during_s']:.2f}"
        warm = "-" if r["warm_s"] is None else f"{r['warm_s']:.1f}"
        print(f"{r['mode']:<8}{r['stall_s']:>10.2f}{r['committed_s']:>13.2f}{r['step_before_s']:>9.2f}"
              f"{during:>13}{r['rss_at_save_gb']:>16.1f}{r['peak_rss_gb']:>13.1f}{warm:>11}")
    print("(buffers s: the steps until the host buffers were allocated on the writer thread, before the save)")
    by = {r["mode"]: r for r in ran}
    if "sync" in by and "async" in by:
        print(f"\nasync stall / sync stall = {by['async']['stall_s'] / by['sync']['stall_s']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
