"""Near-duplicate dedup (exact + MinHash-LSH) against datatrove's MinHash pipeline on the same
scaled corpus and the same cores. Each contender runs in its own subprocess so peak RSS is its
own (for datatrove: the largest of its worker processes, `ru_maxrss` of the waited children).

    python benchmarks/dedup.py [--mb 50] [--workers 2] [--datatrove slimpajama,default]

Both use SlimPajama's parameters (13-grams, 9 bands x 13 rows; tinyllama also verifies
candidates at Jaccard 0.8 with 128 permutations). datatrove runs its four stages:
signatures (tasks = workers) -> buckets (one task per band) -> clusters (1 task) -> filter
(tasks = workers, removed docs written with an exclusion writer so their ids can be compared).
`--datatrove default` also runs datatrove with its own defaults (5-grams, 14 x 8).

datatrove's time is reported twice, both measured in the same run: as run (four
`LocalPipelineExecutor.run()` calls), and without its executor start-up, where the start-up of
each stage is the time of the same executor (same tasks, same workers, a fresh logging dir)
running a no-op pipeline, measured right before that stage. The ratio against tinyllama is
printed for both. CPU use is (user + sys of the process and its workers) / wall / cores over
the timed part (`_data.cpu_seconds`; with psutil it also counts workers forked by datatrove's
forkserver).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, cpu_seconds, cpu_use, peak_rss_mb, scaled_corpus

SLIMPAJAMA = {"ngram": 13, "permutations": 128, "bands": 9, "rows": 13, "threshold": 0.8}


def by_source(ids: set[str]) -> dict[int, int]:
    """Removed docs per base text (`id` is `copy-index`): insensitive to which copy is kept."""
    out: dict[int, int] = {}
    for i in ids:
        k = int(i.split("-", 1)[1])
        out[k] = out.get(k, 0) + 1
    return out


def file_ids(path: Path) -> list[str]:
    """The `id` of every line of a scaled-corpus file, by row."""
    raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
    return [json.loads(line)["id"] for line in raw.decode().splitlines()]


def run_tinyllama(data: list[Path], work: Path, workers: int, memory: int | None) -> dict:
    from tinyllama import _core

    params = dict(SLIMPAJAMA, **({"memory": memory} if memory else {}))
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = _core.dedup_files([str(p) for p in data], "text", json.dumps(params), str(work), workers)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    rss = peak_rss_mb()  # before the id lookup below, which is bookkeeping, not dedup
    ids = [file_ids(p) for p in data]
    return {
        "seconds": seconds,
        "cpu": cpu,
        "stages": {"fingerprint": out["fingerprint_seconds"], "find": out["find_seconds"]},
        "docs": out["docs"],
        "removed": len(out["removed"]),
        "detail": f"exact {out['exact']}, near {out['near']}, spilled runs {out['spilled_runs']}",
        "removed_ids": [ids[f][row] for f, row in out["removed"]],
        "peak_rss_mb": rss,
    }


def noop_step(data, rank: int = 0, world_size: int = 1):
    """A datatrove pipeline step that does nothing: running it measures the executor alone."""
    return data


def run_datatrove(data: list[Path], work: Path, workers: int, config: str) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(n_grams=13, num_buckets=9, hashes_per_bucket=13) if config == "slimpajama" else MinhashConfig()
    folder = str(data[0].parent)

    def reader():
        return JsonlReader(folder, glob_pattern="*.jsonl.zst", text_key="text", id_key="id")

    stages = {
        "signature": ([reader(), MinhashDedupSignature(str(work / "sigs"), config=cfg)], workers),
        "buckets": ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)], cfg.num_buckets),
        "cluster": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)], 1),
        "filter": (
            [reader(), MinhashDedupFilter(str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed")))],
            workers,
        ),
    }
    times, startup = {}, {}
    cpu = 0.0
    for name, (pipeline, tasks) in stages.items():
        # The executor alone (process pool, per-task logging, completion files), same tasks and
        # workers, right before the stage: its start-up, measured in this run.
        t0 = time.perf_counter()
        LocalPipelineExecutor(
            pipeline=[noop_step], tasks=tasks, workers=min(workers, tasks), logging_dir=str(work / "noop" / name)
        ).run()
        startup[name] = time.perf_counter() - t0
        c0, t0 = cpu_seconds(), time.perf_counter()
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(work / "logs" / name)
        ).run()
        times[name] = time.perf_counter() - t0
        cpu += cpu_seconds() - c0
    rss = peak_rss_mb()
    removed_ids = []
    for f in sorted((work / "removed").rglob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            removed_ids += [json.loads(line)["id"] for line in fh if line.strip()]
    docs = sum(len(file_ids(p)) for p in data)
    return {
        "seconds": sum(times.values()),
        "startup": sum(startup.values()),
        "startup_stages": startup,
        "cpu": cpu,
        "stages": times,
        "docs": docs,
        "removed": len(removed_ids),
        "detail": f"{cfg.n_grams}-grams, {cfg.num_buckets} x {cfg.hashes_per_bucket}",
        "removed_ids": removed_ids,
        "peak_rss_mb": rss,
    }


def child(name: str, data: list[Path], work: Path, workers: int, memory: int | None) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if name == "tinyllama":
        r = run_tinyllama(data, work, workers, memory)
    else:
        r = run_datatrove(data, work, workers, name.split("-", 1)[1])
    r["name"] = name
    (work / "result.json").write_text(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50, help="MB of text to dedup")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--datatrove", default="slimpajama", help="datatrove configs: slimpajama,default")
    ap.add_argument("--memory", type=int, default=None, help="tinyllama's dedup memory bound, bytes")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data dir")
    ap.add_argument("--work", type=Path, default=Path("bench-out/dedup"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data, size = scaled_corpus(args.work / "data", args.mb, shared=args.shared)
    if args.child:
        return child(args.child, data, args.work / args.child, args.workers, args.memory)
    results = []
    for name in ["tinyllama"] + [f"datatrove-{c}" for c in args.datatrove.split(",") if c]:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--mb",
            str(args.mb),
            "--workers",
            str(args.workers),
            "--shared",
            str(args.shared),
            "--work",
            str(args.work),
        ]
        if args.memory:
            cmd += ["--memory", str(args.memory)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out = args.work / name / "result.json"
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if "Error" in ln] or proc.stderr.splitlines()[-1:]
            print(f"{name}: FAILED (exit {proc.returncode}): {lines[-1] if lines else ''}")
            continue
        results.append(json.loads(out.read_text()))
    print(f"\nnear-dup dedup on {size / 1e6:.0f} MB of text ({len(data)} jsonl.zst files), {args.workers} workers\n")
    print(f"{'tool':<46}{'seconds':>9}{'docs/s':>10}{'MB/s':>8}{'removed':>9}{'peak RSS MB':>13}{'CPU use':>9}"
          f"{'tinyllama x':>13}")
    ours = results[0] if results and results[0]["name"] == "tinyllama" else None
    rows = []
    for r in results:
        rows.append((r["name"], r["seconds"], r))
        if "startup" in r:
            rows.append((f"{r['name']} w/o executor start-up", r["seconds"] - r["startup"], r))
    for label, seconds, r in rows:
        ratio = f"{seconds / ours['seconds']:.1f}x" if ours and r is not ours else "-"
        # CPU use over the stages as run (the start-up runs were not counted in either figure).
        cpu = cpu_use(r["cpu"], r["seconds"]) if seconds == r["seconds"] else ""
        print(
            f"{label:<46}{seconds:>9.2f}{r['docs'] / seconds:>10,.0f}{size / 1e6 / seconds:>8.2f}"
            f"{r['removed']:>9,}{r['peak_rss_mb']:>13.0f}{cpu:>9}{ratio:>13}"
        )
    print()
    for r in results:
        stages = ", ".join(f"{k} {v:.2f}s ({r['docs'] / v:,.0f} docs/s)" for k, v in r["stages"].items())
        print(f"{r['name']}: {r['docs']:,} docs; {r['detail']}; {stages}")
        if "startup_stages" in r:
            print("  executor start-up (no-op pipeline, same tasks and workers): "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in r["startup_stages"].items())
                  + f"; total {r['startup']:.2f}s")
    if ours:
        mine = set(ours["removed_ids"])
        for r in results[1:]:
            theirs = set(r["removed_ids"])
            both = len(mine & theirs)
            print(
                f"removed-set overlap with {r['name']}: both {both:,}, only tinyllama {len(mine) - both:,}, "
                f"only {r['name']} {len(theirs) - both:,} (Jaccard {both / max(1, len(mine | theirs)):.3f})"
            )
            a, b = by_source(mine), by_source(theirs)
            same = sum(min(n, b.get(k, 0)) for k, n in a.items())
            print(
                f"  counted per base text (ignores which copy each keeps): both {same:,}, "
                f"only tinyllama {len(mine) - same:,}, only {r['name']} {len(theirs) - same:,}"
            )
    print("\n'tinyllama x' = that tool's seconds / tinyllama's seconds (same docs: the docs/s ratio), both measured"
          " in this run.\n'w/o executor start-up' = datatrove's seconds minus the time its LocalPipelineExecutor"
          " takes to run a no-op pipeline with the same tasks and workers (measured in this run, before each stage).\n"
          f"CPU use = (user + sys CPU seconds of the contender's process and its workers) / wall /"
          f" {os.cpu_count()} cores, over the timed stages.")


if __name__ == "__main__":
    main()
