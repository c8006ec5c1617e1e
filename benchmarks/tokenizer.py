"""Tokenizer throughput: tinyllama (Rust core) vs Hugging Face `tokenizers` encode_batch.

Both peers encode the same batches of the same documents (the four shared corpora, scaled to
--size-mb by repeating them with a per-copy perturbation) with add_special_tokens=False, on
the same number of threads. Each (peer, threads) run is a separate subprocess, so the thread
pools are sized from the environment before they start and peak RSS is per peer. The ids of
every run are hashed and must be identical. CPU use = (user + sys CPU seconds of the worker,
all threads, over the encode calls) / wall / cores.

    python benchmarks/tokenizer.py [--size-mb 200] [--threads 2,1] [--data DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _data import cpu_use  # noqa: E402


def default_data() -> Path:
    for cand in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (cand / "corpora").is_dir():
            return cand
    return ROOT.parent / "shared" / "data"


def load_corpora(data: Path) -> list[str]:
    """Every document of the four corpora, in sorted file order."""
    import polars as pl
    import zstandard

    corpora = data / "corpora"
    docs: list[str] = []
    for path in sorted(corpora.rglob("*")):
        name = path.name
        if name.endswith(".parquet"):
            docs.extend(pl.read_parquet(path, columns=["content"])["content"].to_list())
        elif name.endswith(".jsonl") or name.endswith(".jsonl.zst"):
            raw = path.read_bytes()
            if name.endswith(".zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
            for line in raw.decode("utf-8").splitlines():
                if line:
                    docs.append(json.loads(line)["text"])
    if not docs:
        sys.exit(f"no documents under {corpora}")
    return docs


def scaled(docs: list[str], size_mb: float) -> list[str]:
    """Repeat the corpora until size_mb of UTF-8 text. Copy k > 0 prefixes each document with
    a copy tag and shuffles the document order, so no whole document repeats verbatim (word-
    level repeats stay, as in any real corpus)."""
    target = int(size_mb * 1e6)
    out: list[str] = []
    total, k = 0, 0
    while total < target:
        order = list(range(len(docs)))
        if k:
            random.Random(k).shuffle(order)
        for i in order:
            d = docs[i] if k == 0 else f"copy {k} doc {i}: {docs[i]}"
            out.append(d)
            total += len(d.encode("utf-8"))
            if total >= target:
                break
        k += 1
    return out


def batches(docs: list[str], batch_docs: int) -> list[list[str]]:
    return [docs[i : i + batch_docs] for i in range(0, len(docs), batch_docs)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """One peer at one thread count; prints a JSON result line."""
    import numpy as np

    docs = scaled(load_corpora(Path(args.data)), args.size_mb)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    bs = batches(docs, args.batch_docs)
    tok_json = Path(args.data) / "tokenizers" / "llama2" / "tokenizer.json"
    if args.worker == "tinyllama":
        import tinyllama

        tok = tinyllama.Tokenizer(tok_json)
        encode = lambda b: tok.encode_batch(b, add_special_tokens=False)
        as_arrays = lambda out: out
    else:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(tok_json))
        encode = lambda b: tok.encode_batch(b, add_special_tokens=False)
        as_arrays = lambda out: [np.asarray(e.ids, dtype=np.uint32) for e in out]
    base_rss = rss_mb()
    h = hashlib.sha256()
    seconds, cpu, ntokens = 0.0, 0.0, 0
    for b in bs:
        c0, t0 = time.process_time(), time.perf_counter()
        out = encode(b)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        # Hashing is outside the timed region; it proves both peers gave the same ids.
        for ids in as_arrays(out):
            ids = np.ascontiguousarray(ids, dtype=np.uint32)
            ntokens += len(ids)
            h.update(len(ids).to_bytes(8, "little"))
            h.update(ids.tobytes())
        del out
    print(
        json.dumps(
            {
                "peer": args.worker,
                "threads": args.threads,
                "docs": len(docs),
                "bytes": nbytes,
                "tokens": ntokens,
                "seconds": seconds,
                "cpu": cpu,
                "ids_sha256": h.hexdigest(),
                "base_rss_mb": base_rss,
                "peak_rss_mb": rss_mb(),
            }
        )
    )


def run_worker(peer: str, threads: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    # Size both peers' rayon pools the same way: tinyllama uses the global rayon pool
    # (RAYON_NUM_THREADS); the `tokenizers` package reads RAYON_RS_NUM_CPUS and only runs in
    # parallel when TOKENIZERS_PARALLELISM is true.
    env["RAYON_NUM_THREADS"] = str(threads)
    env["RAYON_RS_NUM_CPUS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        peer,
        "--threads",
        str(threads),
        "--size-mb",
        str(args.size_mb),
        "--batch-docs",
        str(args.batch_docs),
        "--data",
        str(args.data),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{peer} worker failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(default_data()), help="shared data dir (has corpora/, tokenizers/)")
    p.add_argument("--size-mb", type=float, default=200.0, help="MB of text to encode")
    p.add_argument("--threads", default=f"{os.cpu_count() or 1},1", help="comma-separated thread counts")
    p.add_argument("--batch-docs", type=int, default=1024, help="documents per encode_batch call")
    p.add_argument("--worker", choices=["tinyllama", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        worker(args)
        return

    print(f"data {args.data}, {args.size_mb:g} MB, batches of {args.batch_docs} docs, cpus {os.cpu_count()}")
    header = (f"{'threads':>7} {'peer':>10} {'tokens':>12} {'seconds':>8} {'Mtok/s':>8} {'MB/s':>7}"
              f" {'peak RSS MB':>11} {'CPU use':>7} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    ok = True
    for threads in [int(t) for t in args.threads.split(",")]:
        ours = run_worker("tinyllama", threads, args)
        theirs = run_worker("hf", threads, args)
        same = ours["ids_sha256"] == theirs["ids_sha256"] and ours["tokens"] == theirs["tokens"]
        ok &= same
        ratio = (ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"])
        for r in (ours, theirs):
            print(
                f"{threads:>7} {r['peer']:>10} {r['tokens']:>12,} {r['seconds']:>8.2f} "
                f"{r['tokens'] / r['seconds'] / 1e6:>8.3f} {r['bytes'] / r['seconds'] / 1e6:>7.2f} "
                f"{r['peak_rss_mb']:>11.0f} {cpu_use(r['cpu'], r['seconds']):>7} {ratio if r is ours else 1.0:>6.2f}"
            )
        print(f"{'':>7} ids identical: {same}")
    print(f"ratio = tinyllama's tokens/s / tokenizers' tokens/s, both measured in this run; CPU use = user + sys CPU"
          f" seconds of the encode calls / their wall time / {os.cpu_count()} cores")
    if not ok:
        sys.exit("ids differ between tinyllama and tokenizers")


if __name__ == "__main__":
    main()
