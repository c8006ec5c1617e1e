"""Whole `mix build` (read, decompress, parse, tokenize, write) against datatrove's and dolma's
equivalents on the same scaled corpus and the same cores. Each contender runs in its own
subprocess so peak RSS is its own.

    python benchmarks/build.py [--mb 100] [--workers 2] [--peers datatrove,dolma]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, peak_rss_mb, scaled_corpus, single_corpus_spec

TOKENIZER = SHARED / "tokenizers/llama2/tokenizer.json"


def run_tinyllama(data: Path, work: Path, workers: int) -> int:
    import tinyllama
    from tinyllama.build import build_mix

    spec = single_corpus_spec(work, data, TOKENIZER)
    build_mix(spec, work / "mix", workers, progress=False)
    return tinyllama.Mix(work / "mix").inspect()["corpora"]["c"]["tokens"]


def run_datatrove(data: Path, work: Path, workers: int) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    files = sorted(data.glob("*.jsonl.zst"))
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(data), glob_pattern="*.jsonl.zst", text_key="text"),
            DocumentTokenizer(str(work / "out"), tokenizer_name_or_path=str(TOKENIZER), eos_token="</s>",
                              local_working_dir=str(work / "tmp"), shuffle_documents=False),
        ],
        tasks=len(files),
        workers=workers,
        logging_dir=str(work / "logs"),
    ).run()
    total = 0
    for meta in (work / "out").rglob("*.metadata"):
        total += int(meta.read_text().split("\n")[1]) if meta.read_text().count("\n") else 0
    return total


def run_dolma(data: Path, work: Path, workers: int) -> int:
    exe = shutil.which("dolma") or str(Path(sys.executable).parent / "dolma")
    subprocess.run([exe, "tokens", "--documents", *map(str, sorted(data.glob("*.jsonl.zst"))),
                    "--destination", str(work / "out"), "--tokenizer.name_or_path", str(TOKENIZER),
                    "--tokenizer.bos_token_id", "1", "--tokenizer.eos_token_id", "2",
                    "--processes", str(workers), "--dtype", "uint16"], check=True,
                   stdout=subprocess.DEVNULL)
    import numpy as np

    return sum(np.memmap(p, dtype=np.uint16, mode="r").shape[0] for p in (work / "out").rglob("*.npy"))


RUNNERS = {"tinyllama": run_tinyllama, "datatrove": run_datatrove, "dolma": run_dolma}


def child(name: str, data: Path, work: Path, workers: int) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    tokens = RUNNERS[name](data, work, workers)
    seconds = time.perf_counter() - t0
    print(json.dumps({"name": name, "seconds": seconds, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="MB of text to build")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--peers", default="datatrove,dolma")
    ap.add_argument("--work", type=Path, default=Path("bench-out/build"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data, size = scaled_corpus(args.work / "data", args.mb)
    if args.child:
        return child(args.child, args.work / "data", args.work / args.child, args.workers)
    results = []
    for name in ["tinyllama"] + [p for p in args.peers.split(",") if p]:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--mb", str(args.mb), "--workers",
                               str(args.workers), "--work", str(args.work)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed ({proc.stderr.strip().splitlines()[-1:] or proc.returncode})")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\nmix build on {size / 1e6:.0f} MB of text ({len(data)} jsonl.zst files), {args.workers} workers\n")
    print(f"{'tool':<12}{'seconds':>9}{'MB/s':>9}{'Mtok/s':>9}{'tokens':>14}{'peak RSS MB':>13}{'speed vs':>10}")
    ours = results[0]["seconds"] if results and results[0]["name"] == "tinyllama" else None
    for r in results:
        ratio = f"{r['seconds'] / ours:.2f}x" if ours and r["name"] != "tinyllama" else "-"
        print(f"{r['name']:<12}{r['seconds']:>9.2f}{size / 1e6 / r['seconds']:>9.1f}"
              f"{r['tokens'] / 1e6 / r['seconds']:>9.2f}{r['tokens']:>14,}{r['peak_rss_mb']:>13.0f}{ratio:>10}")
    print("\n'speed vs' = that tool's time / tinyllama's time (how many times faster tinyllama is).")


if __name__ == "__main__":
    main()
