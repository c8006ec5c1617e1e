"""`mix build` and the loader with the data in a bucket, against the same files and mix on local
disk, measured in the same run on the same cores: the cost of object storage.

The bucket is a real S3-compatible server this benchmark starts on 127.0.0.1 (moto's server mode,
`pip install -e .[test]`); nothing leaves the machine. moto keeps objects in its own process's
memory and is written in Python, so these figures bound the client's overhead from above: a
cloud store serves many connections at once and the build's readers overlap their requests.

    python benchmarks/bucket.py [--mb 100] [--workers 2] [--steps 100]

Cases (each in its own subprocess, so peak RSS is its own):
- build, local: `paths = ["DATA/*.jsonl.zst"]` (16 files of the shared corpora, scaled).
- build, bucket: the same files uploaded to `s3://bench/data/`, `paths = ["s3://bench/data/*.jsonl.zst"]`.
  MB/s = text bytes (and compressed input bytes) / wall. The two mixes must be byte-identical (checked).
- loader, local: `tinyllama.Mix(DIR).loader()` over `--steps` steps: the time to the first batch
  (opening the mix included) and the steady tokens/s after it.
- loader, bucket cold: the mix (4M-token shards) published to `s3://bench/mix`, `Mix(URL,
  cache_dir=EMPTY)`: every shard a step needs is fetched on first use, in the loader's threads.
- loader, bucket warm: the same cache dir again: nothing fetched.

CPU use = (user + sys CPU seconds of the contender's process) / wall / cores (moto's server is
another process: not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, cpu_seconds, cpu_use, peak_rss_mb, scaled_corpus, single_corpus_spec

TOKENIZER = SHARED / "tokenizers/llama2/tokenizer.json"
BUCKET = "bench"


def child_build(pattern: str, work: Path, workers: int) -> dict:
    import shutil

    from tinyllama.data.build import build_mix

    shutil.rmtree(work / "mix", ignore_errors=True)  # this benchmark's own output: built from scratch each run
    work.mkdir(parents=True, exist_ok=True)
    spec = single_corpus_spec(work, None, TOKENIZER, pattern=pattern, shard_tokens="4M")
    summary = build_mix(spec, work / "mix", workers, progress=False)
    return {"tokens": summary["tokens"]}


def child_loader(mix: str, cache: str | None, steps: int) -> dict:
    import torch  # noqa: F401  (imported before the clock starts: not part of the loader's time)

    import tinyllama

    t0 = time.perf_counter()
    m = tinyllama.Mix(mix, cache_dir=cache) if cache else tinyllama.Mix(mix)
    loader = m.loader(threads=2, pin=False)
    first = t1 = None
    tokens = 0
    for n, batch in enumerate(loader):
        if first is None:
            first, t1 = time.perf_counter() - t0, time.perf_counter()
        else:
            tokens += batch.tokens.numel()  # after the first batch: the steady rate
        if n + 1 == steps:
            break
    return {"tokens": tokens, "first_batch_s": first, "steady_s": time.perf_counter() - t1,
            "shards_cached": len(list(Path(cache).rglob("*.bin"))) if cache else None}


def zstd_lines(path: Path):
    import io

    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        yield from io.BufferedReader(r)


def run_child(args: list[str], env: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("build.log", ".lock")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="MB of text")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=100, help="loader steps (1M tokens each)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/bucket"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child:
        c0, t0 = cpu_seconds(), time.perf_counter()
        if args.child == "build":
            out = child_build(rest[0], Path(rest[1]), int(rest[2]))
        else:
            out = child_loader(rest[0], rest[1] if rest[1] != "-" else None, int(rest[2]))
        print(json.dumps({**out, "seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - c0,
                          "peak_rss_mb": peak_rss_mb()}))
        return

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    from tinyllama import _core, storage

    work = args.work.resolve()
    data = work / "data"
    files, _ = scaled_corpus(data, args.mb, files=16)
    size = sum(f.stat().st_size for f in files)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "TINYLLAMA_CACHE": str(work / "tinyllama-cache")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
        b = _core.Bucket(f"s3://{BUCKET}")
        for f in files:
            b.upload(str(f), f"data/{f.name}")
        data = files[0].parent
        rows = []
        local = run_child(["build", str(data / "*.jsonl.zst"), str(work / "local"), str(args.workers)], env)
        remote = run_child(["build", f"s3://{BUCKET}/data/*.jsonl.zst", str(work / "remote"), str(args.workers)], env)
        same = tree_bytes(work / "local/mix") == tree_bytes(work / "remote/mix")
        text = sum(len(line) for f in files for line in zstd_lines(f))
        for name, r in (("build, local disk", local), ("build, bucket", remote)):
            rate = f"{text / 1e6 / r['seconds']:.1f} MB/s of text ({size / 1e6 / r['seconds']:.1f} compressed)"
            rows.append((name, rate, r["seconds"], local["seconds"] / r["seconds"],
                         r["peak_rss_mb"], cpu_use(r["cpu"], r["seconds"], args.workers)))
        storage.upload_dir(b, work / "local/mix", "mix", last=("mix.json",), skip=frozenset({"build.log", ".lock"}))
        cache = work / "mix-cache"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        steps = str(args.steps)
        loads = [("loader, local disk", run_child(["loader", str(work / "local/mix"), "-", steps], env)),
                 ("loader, bucket, cold cache", run_child(["loader", f"s3://{BUCKET}/mix", str(cache), steps], env)),
                 ("loader, bucket, warm cache", run_child(["loader", f"s3://{BUCKET}/mix", str(cache), steps], env))]
        base = loads[0][1]
        shards = len(list((work / "local/mix").rglob("*.bin")))
        for name, r in loads:
            rate = f"{r['tokens'] / r['steady_s'] / 1e6:.1f} M tok/s, first batch {r['first_batch_s']:.2f} s"
            if r["shards_cached"] is not None:
                rate += f", {r['shards_cached']}/{shards} shards"
            rows.append((name, rate, r["seconds"], base["seconds"] / r["seconds"], r["peak_rss_mb"],
                         cpu_use(r["cpu"], r["seconds"], os.cpu_count())))
    finally:
        server.stop()
    print(f"{args.mb} MB of text in {len(files)} .jsonl.zst files ({size / 1e6:.1f} MB compressed), "
          f"{args.workers} workers, {os.cpu_count()} cores; bucket: moto on 127.0.0.1")
    print(f"the bucket build's mix is byte-identical to the local one: {same}")
    print(f"{'case':28} {'rate':56} {'wall s':>8} {'vs local':>9} {'peak MB':>8} {'CPU':>6}")
    for name, rate, secs, ratio, rss, cpu in rows:
        print(f"{name:28} {rate:56} {secs:8.2f} {ratio:8.2f}x {rss:8.0f} {cpu:>6}")
    if not same:
        raise SystemExit("the mixes differ")


if __name__ == "__main__":
    main()
