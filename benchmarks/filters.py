"""Quality heuristics (gopher_quality -> gopher_repetition -> c4 -> fineweb, a chain that stops
at the first drop) with tinyllama (`judge_documents`, Rust, `--workers` threads) against
datatrove's same four filters with their defaults (a multiprocessing pool of `--workers`
processes, each with its own filters, applying them in the same order) on the same documents:
the English shared corpus (SlimPajama) scaled up to `--mb` MB. Each contender runs in its own
subprocess so its peak RSS is its own (datatrove: its largest waited-for worker).

    python benchmarks/filters.py [--mb 100] [--datatrove-mb 100] [--workers N]

`--datatrove-mb` (<= --mb) runs datatrove on the first documents only, when it is too slow for
the whole; the ratio is then of throughput (MB/s), both measured in the same run. Reading and
decompressing the corpus is not timed for either. The decisions of both are compared document
by document on the documents both judged (agreement and same-reason share are printed).
CPU use is (user + sys of the process and its workers) / wall / cores (`_data.cpu_use`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, cpu_seconds, cpu_use, peak_rss_mb, read_docs, scaled_named_corpus

CHAIN = ["gopher_quality", "gopher_repetition", "c4", "fineweb"]


def load(paths: list[Path], megabytes: float) -> list[str]:
    texts, size = [], 0
    for p in paths:
        for d in read_docs(p):
            if size >= megabytes * 1e6:
                return texts
            texts.append(d["text"])
            size += len(d["text"].encode())
    return texts


def run_tinyllama(texts: list[str], workers: int) -> dict:
    from tinyllama import _core
    from tinyllama.data import word_rules

    word_rules.ensure()  # spaCy's English rules, from the installed spaCy (untimed, as datatrove's load)

    chain = [(n, "{}") for n in CHAIN]
    _core.judge_documents(chain, texts[:100], workers)  # load the rules once, untimed
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = _core.judge_documents(chain, texts, workers)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu": cpu_seconds() - c0,
        "peak_rss_mb": peak_rss_mb(),
        "reasons": [None if r is None else r[1] for r in out],
    }


_FILTERS = None


def _init_datatrove() -> None:
    global _FILTERS
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.text import split_into_words

    _FILTERS = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()]
    split_into_words("Load spaCy now.")  # the tokenizer's load is start-up, as ours is


def _judge_datatrove(batch: tuple[int, list[str]]) -> list[str | None]:
    from datatrove.data import Document

    start, texts = batch
    out = []
    for i, t in enumerate(texts):
        reason = None
        for f in _FILTERS:
            r = f.filter(Document(text=t, id=str(start + i)))
            if r is not True:
                reason = r[1] if isinstance(r, tuple) else ""
                break
        out.append(reason)
    return out


def run_datatrove(texts: list[str], workers: int) -> dict:
    import multiprocessing as mp

    batches = [(i, texts[i : i + 64]) for i in range(0, len(texts), 64)]
    with mp.get_context("fork").Pool(workers, initializer=_init_datatrove) as pool:
        pool.map(_judge_datatrove, [(0, ["Warm up the workers."])] * workers)
        c0, t0 = cpu_seconds(), time.perf_counter()
        parts = pool.map(_judge_datatrove, batches, chunksize=1)
        seconds = time.perf_counter() - t0
        pool.close()
        pool.join()  # waited-for workers: their CPU time is counted as children's
    cpu = cpu_seconds() - c0
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "reasons": [r for p in parts for r in p],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--datatrove-mb", type=float, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--work", type=Path, default=Path("/tmp/tinyllama-bench-filters"))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    dt_mb = min(args.datatrove_mb or args.mb, args.mb)
    paths, _ = scaled_named_corpus(args.work / "data", args.mb, "slimpajama", files=8, shared=args.shared)
    if args.child:
        texts = load(paths, args.mb if args.child == "tinyllama" else dt_mb)
        run = run_tinyllama if args.child == "tinyllama" else run_datatrove
        res = run(texts, args.workers)
        res.update(docs=len(texts), bytes=sum(len(t.encode()) for t in texts))
        (args.work / f"{args.child}.json").write_text(json.dumps(res))
        return
    results = {}
    for name in ["tinyllama", "datatrove"]:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--mb",
            str(args.mb),
            "--datatrove-mb",
            str(dt_mb),
            "--workers",
            str(args.workers),
            "--work",
            str(args.work),
            "--shared",
            str(args.shared),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            return
        results[name] = json.loads((args.work / f"{name}.json").read_text())
    ours, theirs = results["tinyllama"], results["datatrove"]
    print(
        f"\nquality heuristics ({' -> '.join(CHAIN)}, datatrove defaults) on SlimPajama scaled to "
        f"{ours['bytes'] / 1e6:.0f} MB (datatrove: first {theirs['bytes'] / 1e6:.0f} MB), {args.workers} workers\n"
    )
    print(
        f"{'tool':<12}{'docs':>10}{'MB':>8}{'seconds':>9}{'docs/s':>10}{'MB/s':>8}{'kept':>8}"
        f"{'peak RSS MB':>13}{'CPU use':>9}{'tinyllama x':>13}"
    )
    for name, r in results.items():
        mbs = r["bytes"] / 1e6 / r["seconds"]
        ratio = (ours["bytes"] / ours["seconds"]) / (r["bytes"] / r["seconds"])
        kept = sum(x is None for x in r["reasons"]) / len(r["reasons"])
        print(
            f"{name:<12}{r['docs']:>10,}{r['bytes'] / 1e6:>8.1f}{r['seconds']:>9.2f}{r['docs'] / r['seconds']:>10,.0f}"
            f"{mbs:>8.2f}{kept:>8.1%}{r['peak_rss_mb']:>13.0f}{cpu_use(r['cpu'], r['seconds'], args.workers):>9}"
            f"{ratio:>12.1f}x"
        )
    n = len(theirs["reasons"])
    a, b = ours["reasons"][:n], theirs["reasons"]
    agree = sum((x is None) == (y is None) for x, y in zip(a, b))
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    same = sum(x == y for x, y in both)
    print(
        f"\nagreement with datatrove on the {n:,} docs both judged: {agree / n:.3%} keep/drop, "
        f"same reason on {same / max(len(both), 1):.3%} of {len(both):,} common drops"
    )
    diffs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if diffs:
        print(f"first disagreements (doc, tinyllama, datatrove): {diffs[:8]}")
    print("'tinyllama x' = tinyllama's MB/s / that tool's MB/s, both measured in this run, same cores.")


if __name__ == "__main__":
    main()
