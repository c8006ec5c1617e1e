"""Loader throughput and resume: tinyllama's zero-copy ring loader against TinyLlama's reader
(lit-gpt `PackedDataset` + `CombinedDataset`) and litdata's `StreamingDataset` +
`CombinedStreamingDataset`, all delivering 8 x 2049-token micro-batches as torch tensors from the
same tokens, from page cache. Each contender runs in its own subprocess, so its peak RSS is its
own.

TinyLlama's reader: by default a re-implementation in this file, written from TinyLlama's
`lit_gpt/packed_dataset.py` (same chunk-file format, memmaps, seeded block permutation, int64
copies, `random.choices` over the corpora, a torch DataLoader with no workers), and labelled
"TinyLlama-style ... (re-implemented here)" in the output. `--tinyllama-src PATH` (a TinyLlama
checkout, or its `lit_gpt/packed_dataset.py`) runs TinyLlama's own classes from that file
instead; nothing is downloaded, and TinyLlama's code is not part of this project.

Resume: tinyllama locates the step (measured at steps 1,000 and 1,000,000). TinyLlama resumes
by iterating its DataLoader through every micro-batch since step 0; the benchmark measures a
replay of `--replay` micro-batches (default 2,000) from a fresh DataLoader, and the figures for
steps 1,000 and 1,000,000 are that measurement extrapolated linearly, and labelled so.

The ~60k tokens/s an H100 consumes training the 1.1B model is a reference constant (from the
project's SPEC), not a measured peer.

Setup (cached under --work): about 100 MB of real text, half English (slimpajama-like), half
Chinese (skypile-like); a mix with seq_len 2048 mixing them 50/50 in 16384-token (8-sequence)
steps; a second mix over the same data with TinyLlama's 2T-token schedule at a 1.8M-token batch
(for resume at step 1M); the same tokens as lit-gpt chunk files and as litdata chunks.

    python benchmarks/loader.py [--quick] [--seconds 1.5] [--peers packed,litdata] [--replay 2000]
                                [--tinyllama-src PATH/TO/TinyLlama]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import cpu_use, default_shared, peak_rss_mb, scaled_named_corpus

CORPORA = ("slimpajama", "skypile")
SEQ = 2048
BLOCK = SEQ + 1  # a training sequence plus its shifted target
MICRO = 8  # sequences per micro-batch (TinyLlama's micro_batch_size)
LONG_BATCH = 1_835_008  # 896 sequences: the v1.1 recipe's ~1.8M-token global batch
H100_TOKENS_S = 60_000  # reference constant (SPEC.md), not measured: what one H100 consumes training the 1.1B model


# -- setup --------------------------------------------------------------------------------------

def spec_text(name: str, data: Path, tokenizer: Path, stage_tokens: str, batch_tokens: int) -> str:
    corpora = "".join(f"""
        [corpora.{c}]
        paths = ["{data / c}/*.jsonl.zst"]
        dedup = "none"
        """ for c in CORPORA)
    return textwrap.dedent(f"""
        name = "{name}"
        seed = 3407
        seq_len = {SEQ}
        tokenizer = "{tokenizer}"
        """) + textwrap.dedent(corpora) + textwrap.dedent(f"""
        [[stages]]
        tokens = "{stage_tokens}"
        batch_tokens = {batch_tokens}
        weights = {{ slimpajama = 0.5, skypile = 0.5 }}
        """)


def build(work: Path, name: str, shared: Path, stage_tokens: str, batch_tokens: int, workers: int) -> Path:
    from tinyllama.data.build import build_mix

    out = work / name
    if not (out / "mix.json").exists():
        spec = work / f"{name}.toml"
        tokenizer = shared.resolve() / "tokenizers/llama2/tokenizer.json"
        spec.write_text(spec_text(name, (work / "data").resolve(), tokenizer, stage_tokens, batch_tokens))
        t0 = time.perf_counter()
        build_mix(spec, out, workers, progress=False)
        print(f"  built {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


# lit-gpt's chunk-file format: magic, u64 version, u8 dtype code, u64 chunk size, then the tokens.
LIT_MAGIC = b"LITPKDS"
LIT_HEADER = len(LIT_MAGIC) + 8 + 1 + 8
LIT_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float32", 7: "float64", 8: "uint16"}
LIT_CHUNK = BLOCK * 1024  # TinyLlama's prepare scripts: chunk_size = (2048 + 1) * 1024


def write_lit_chunks(mix_dir: Path, out: Path) -> None:
    """Every document of each corpus, back to back (as lit-gpt's PackedDatasetBuilder packs them),
    cut into full chunks of LIT_CHUNK tokens; the partial last chunk is dropped, as the builder
    does unless asked for the remainder."""
    import numpy as np

    import tinyllama

    if (out / ".complete").exists():
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    mix = tinyllama.Mix(mix_dir)
    for corpus in CORPORA:
        stream = np.concatenate([s.tokens for s in mix.shards(corpus)])
        for k in range(len(stream) // LIT_CHUNK):
            with open(out / f"{corpus}_{k:010d}.bin", "wb") as f:
                f.write(LIT_MAGIC + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", LIT_CHUNK))
                f.write(stream[k * LIT_CHUNK:(k + 1) * LIT_CHUNK].astype(np.uint16).tobytes())
    (out / ".complete").write_text("")


def litdata_docs(shard_path: str):
    """litdata.optimize's fn: one int32 tensor per document of a tinyllama shard."""
    import torch

    from tinyllama.data.shards import open_shard

    for doc in open_shard(shard_path):
        yield torch.from_numpy(doc.astype("int32"))


def write_litdata(mix_dir: Path, out: Path) -> None:
    """The same documents through `litdata.optimize` with a TokensLoader (one item a document,
    as litgpt's data-prep scripts write them)."""
    if (out / ".complete").exists():
        return
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    import tinyllama

    shutil.rmtree(out, ignore_errors=True)
    mix = tinyllama.Mix(mix_dir)
    for corpus in CORPORA:
        shards = [str(s.path) for s in mix.shards(corpus)]
        optimize(fn=litdata_docs, inputs=shards, output_dir=str(out / corpus), chunk_size=LIT_CHUNK,
                 item_loader=TokensLoader(), num_workers=1, mode="overwrite")
    (out / ".complete").write_text("")


def warm(paths: list[Path]) -> None:
    """Read every byte once, so the timed passes read from page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


# -- contenders ---------------------------------------------------------------------------------

def timed(batches, seconds: float, warmup: int) -> tuple[int, int, float, float]:
    """Pull batches for `seconds` after `warmup` untimed ones; consume each minimally (read one
    element), so what is timed is producing the tensor. Returns (batches, tokens, seconds, cpu
    seconds of the whole process, all its threads, over the same interval)."""
    it = iter(batches)
    for _ in range(warmup):
        int(next(it)[0, 0])
    n = tokens = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        x = next(it)
        int(x[0, 0])
        assert tuple(x.shape) == (MICRO, BLOCK), x.shape
        n += 1
        tokens += x.numel()
        del x
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n, tokens, elapsed, time.process_time() - c0


def run_tinyllama(work: Path, threads: int, seconds: float, warmup: int) -> dict:
    import tinyllama

    warm(files_under(work / "short" / "corpora"))
    mix = tinyllama.Mix(work / "short")
    assert mix.batch_sequences(0) == MICRO
    loader = mix.loader(threads=threads, pin=False)
    n, tokens, elapsed, cpu = timed((b.tokens for b in loader), seconds, warmup)
    return {"batches": n, "tokens": tokens, "seconds": elapsed, "cpu": cpu, "dtype": "int32"}


class PackedDatasetIterator:
    """A re-implementation of TinyLlama's (lit-gpt's) PackedDatasetIterator: memmap `n_chunks`
    chunk files at a time, visit their blocks in a seeded random permutation, copy each block out
    as int64. (`--tinyllama-src` runs TinyLlama's own instead.)"""

    def __init__(self, filenames: list[str], n_chunks: int, block_size: int, seed: int, shuffle: bool, wrap: bool):
        import numpy as np

        self.filenames, self.n_chunks, self.block_size = filenames, n_chunks, block_size
        self.shuffle, self.wrap = shuffle, wrap
        self.rng = np.random.default_rng(seed) if shuffle else None
        self.file_idx = 0
        self.dtype = None
        self.n_blocks = 0
        self.mmaps: list = []
        self.buffers: list = []
        self.load_n_chunks()

    def read_header(self, path: str):
        with open(path, "rb") as f:
            if f.read(len(LIT_MAGIC)) != LIT_MAGIC:
                raise ValueError(f"{path}: not a lit-gpt chunk file")
            (version,) = struct.unpack("<Q", f.read(8))
            assert version == 1
            (code,) = struct.unpack("<B", f.read(1))
            (chunk_size,) = struct.unpack("<Q", f.read(8))
        return LIT_DTYPES[code], chunk_size

    def load_n_chunks(self) -> None:
        import numpy as np

        for m in self.mmaps:
            m._mmap.close()
        self.mmaps, self.buffers = [], []
        if self.n_chunks > len(self.filenames) - self.file_idx:
            if not self.wrap:
                raise StopIteration
            self.file_idx = 0
        for i in range(self.n_chunks):
            name = self.filenames[self.file_idx + i]
            if self.dtype is None:
                self.dtype, chunk_size = self.read_header(name)
                self.n_blocks = chunk_size // self.block_size
            m = np.memmap(name, mode="r", order="C", offset=LIT_HEADER)
            self.mmaps.append(m)
            self.buffers.append(memoryview(m))
        self.file_idx += self.n_chunks
        total = self.n_chunks * self.n_blocks
        self.block_idxs = self.rng.permutation(total) if self.shuffle else range(total)
        self.curr = 0

    def __iter__(self):
        return self

    def __next__(self):
        import numpy as np
        import torch

        if self.curr >= len(self.block_idxs):
            self.load_n_chunks()
        block = self.block_idxs[self.curr]
        chunk, within = divmod(int(block), self.n_blocks)
        offset = np.dtype(self.dtype).itemsize * within * self.block_size
        arr = np.frombuffer(self.buffers[chunk], dtype=self.dtype, count=self.block_size, offset=offset)
        self.curr += 1
        return torch.from_numpy(arr.astype(np.int64))


def tinyllama_module(src: str | None):
    """TinyLlama's own `lit_gpt/packed_dataset.py`, loaded from `src` (the file, or a TinyLlama
    checkout holding it); None without `src`."""
    if not src:
        return None
    path = Path(src)
    if path.is_dir():
        path = path / "lit_gpt" / "packed_dataset.py"
    if not path.is_file():
        raise SystemExit(f"--tinyllama-src: {path} not found (give a TinyLlama checkout or its "
                         "lit_gpt/packed_dataset.py)")
    spec = importlib.util.spec_from_file_location("tinyllama_upstream_packed_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def packed_label(src: str | None) -> str:
    return ("TinyLlama PackedDataset+CombinedDataset (their file, --tinyllama-src)" if src
            else "TinyLlama-style PackedDataset+CombinedDataset (re-implemented here)")


def packed_dataloader(chunks: Path, seed: int = 3407, src: str | None = None):
    """TinyLlama's pretrain data path: one PackedDataset per corpus (n_chunks=8, shuffle, wrap),
    a CombinedDataset drawing the source of every sample with random.choices(weights), and a
    torch DataLoader (batch_size=8, no workers) collating with torch.stack. With `src`, the
    PackedDataset and CombinedDataset classes are TinyLlama's own, from that file."""
    from torch.utils.data import DataLoader, IterableDataset

    upstream = tinyllama_module(src)
    if upstream is not None:
        datasets = []
        for corpus in CORPORA:
            names = sorted(str(p) for p in chunks.glob(f"{corpus}_*.bin"))
            datasets.append(upstream.PackedDataset(names, n_chunks=min(8, len(names)), block_size=BLOCK, seed=seed,
                                                   shuffle=True, wrap=True))
        return DataLoader(upstream.CombinedDataset(datasets, seed, [0.5, 0.5]), batch_size=MICRO, shuffle=False,
                          pin_memory=False)

    class PackedDataset(IterableDataset):
        def __init__(self, filenames, n_chunks, block_size, seed):
            self.args = (filenames, n_chunks, block_size, seed)

        def __iter__(self):
            filenames, n_chunks, block_size, seed = self.args
            return PackedDatasetIterator(filenames, n_chunks, block_size, seed, shuffle=True, wrap=True)

    class CombinedDataset(IterableDataset):
        def __init__(self, datasets, seed, weights):
            self.datasets, self.seed, self.weights = datasets, seed, weights

        def __iter__(self):
            its = [iter(d) for d in self.datasets]
            rng = random.Random(self.seed)
            while True:
                (it,) = rng.choices(its, weights=self.weights, k=1)
                yield next(it)

    datasets = []
    for corpus in CORPORA:
        names = sorted(str(p) for p in chunks.glob(f"{corpus}_*.bin"))
        datasets.append(PackedDataset(names, n_chunks=min(8, len(names)), block_size=BLOCK, seed=seed))
    return DataLoader(CombinedDataset(datasets, seed, [0.5, 0.5]), batch_size=MICRO, shuffle=False,
                      pin_memory=False)


def run_packed(work: Path, seconds: float, warmup: int, src: str | None) -> dict:
    warm(files_under(work / "litgpt"))
    n, tokens, elapsed, cpu = timed(packed_dataloader(work / "litgpt", src=src), seconds, warmup)
    return {"batches": n, "tokens": tokens, "seconds": elapsed, "cpu": cpu, "dtype": "int64"}


def run_replay(work: Path, micro_batches: int, src: str | None) -> dict:
    """TinyLlama's resume, measured: a fresh DataLoader (as after a restart) iterated through
    `micro_batches` micro-batches, each consumed minimally, as its training loop skips them."""
    warm(files_under(work / "litgpt"))
    c0, t0 = time.process_time(), time.perf_counter()
    it = iter(packed_dataloader(work / "litgpt", src=src))
    for _ in range(micro_batches):
        x = next(it)
        int(x[0, 0])
        assert tuple(x.shape) == (MICRO, BLOCK), x.shape
    return {"batches": micro_batches, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def run_litdata(work: Path, seconds: float, warmup: int) -> dict:
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    warm(files_under(work / "litdata"))
    datasets = [StreamingDataset(str(work / "litdata" / c), item_loader=TokensLoader(block_size=BLOCK),
                                 shuffle=True, drop_last=True, seed=3407) for c in CORPORA]
    combined = CombinedStreamingDataset(datasets, seed=3407, weights=(0.5, 0.5), iterate_over_all=False)
    loader = StreamingDataLoader(combined, batch_size=MICRO, num_workers=0, drop_last=True)

    def forever():  # litdata ends the combined stream when a corpus's epoch ends: start another
        while True:
            yield from loader

    n, tokens, elapsed, cpu = timed(forever(), seconds, warmup)
    return {"batches": n, "tokens": tokens, "seconds": elapsed, "cpu": cpu, "dtype": "int"}


def run_resume(work: Path, seconds: float, warmup: int) -> dict:
    """First-batch latency of `Mix(long).loader(start_step=s)` (open the mix, locate step s,
    gather its windows, hand over the tensor), whole global batch and one rank's micro-batch; best
    of 5 (the machine may be shared)."""
    import tinyllama

    warm(files_under(work / "long" / "corpora"))
    mix = tinyllama.Mix(work / "long")
    out = {"num_steps": mix.num_steps(), "batch_sequences": mix.batch_sequences(0), "latency": {}}
    world_micro = mix.batch_sequences(0) // MICRO
    for step in (1000, 1_000_000):
        for world in (1, world_micro):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                loader = tinyllama.Mix(work / "long").loader(start_step=step, end_step=step + 1, world=world,
                                                             threads=1, pin=False)
                b = next(iter(loader))
                int(b.tokens[0, 0])
                best = min(best, time.perf_counter() - t0)
                assert b.step == step and b.tokens.shape[0] == mix.batch_sequences(step) // world
                del b, loader
            out["latency"][f"{step}/{world}"] = best
    return out


def run_baseline(work: Path, seconds: float, warmup: int) -> dict:
    """Peak RSS of a process that only imports torch, numpy and tinyllama: the floor under every
    contender's figure."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import tinyllama  # noqa: F401

    return {}


CONTENDERS = {
    "baseline": lambda a: run_baseline(a.work, a.seconds, a.warmup),
    "tinyllama t=1": lambda a: run_tinyllama(a.work, 1, a.seconds, a.warmup),
    "tinyllama t=2": lambda a: run_tinyllama(a.work, 2, a.seconds, a.warmup),
    "packed": lambda a: run_packed(a.work, a.seconds, a.warmup, a.tinyllama_src),
    "litdata": lambda a: run_litdata(a.work, a.seconds, a.warmup),
    "resume": lambda a: run_resume(a.work, a.seconds, a.warmup),
    "replay": lambda a: run_replay(a.work, a.replay, a.tinyllama_src),
}
LABELS = {"litdata": "litdata StreamingDataset+Combined"}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)  # the loaders' own threads are the ones under test
    result = CONTENDERS[args.child](args)
    result.update(name=args.child, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


def spawn(name: str, args: argparse.Namespace, timeout: float = 300) -> dict | None:
    cmd = [sys.executable, __file__, "--child", name, "--work", str(args.work), "--seconds", str(args.seconds),
           "--warmup", str(args.warmup), "--replay", str(args.replay)]
    if args.tinyllama_src:
        cmd += ["--tinyllama-src", str(args.tinyllama_src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name}: timed out after {timeout:.0f} s")
        return None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        print(f"{name}: failed: {tail}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prep(name: str, args: argparse.Namespace) -> bool:
    """Run one cached preparation step in a subprocess; report (don't raise) when it fails."""
    proc = subprocess.run([sys.executable, __file__, "--prep", name, "--work", str(args.work)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        print(f"  prepare {name}: failed: {tail}")
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="MB of text (half per corpus)")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per contender (default 1.5)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed micro-batches first (default 50)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 2)")
    ap.add_argument("--quick", action="store_true", help="one round of short passes (0.3 s each)")
    ap.add_argument("--peers", default="packed,litdata")
    ap.add_argument("--tinyllama-src", help="TinyLlama checkout (or its lit_gpt/packed_dataset.py): run its own "
                                            "PackedDataset + CombinedDataset instead of the re-implementation here")
    ap.add_argument("--replay", type=int, default=2000,
                    help="micro-batches of TinyLlama's resume replay to measure (default 2000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="mix build workers (setup only)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/loader"))
    ap.add_argument("--shared", type=Path, default=default_shared(), help="the shared real-data folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.seconds = args.seconds or (0.3 if args.quick else 1.5)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.quick else 50)
    work = args.work
    if args.child:
        return child(args)
    if args.prep:
        return {"litgpt": lambda: write_lit_chunks(work / "short", work / "litgpt"),
                "litdata": lambda: write_litdata(work / "short", work / "litdata")}[args.prep]()

    print(f"setup in {work} (cached); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    size = sum(scaled_named_corpus(work / "data" / c, args.mb // 2, c, shared=args.shared)[1] for c in CORPORA)
    build(work, "short", args.shared, "2B", MICRO * SEQ, args.workers)
    build(work, "long", args.shared, "2T", LONG_BATCH, args.workers)
    peers = [p for p in args.peers.split(",") if p]
    if "packed" in peers and not prep("litgpt", args):
        peers.remove("packed")
    if "litdata" in peers and not prep("litdata", args):
        peers.remove("litdata")

    load_before = os.getloadavg()[0]
    base = spawn("baseline", args)
    # Rounds interleave the contenders (other work on the machine comes and goes); each keeps its
    # best round.
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in ["tinyllama t=1", "tinyllama t=2", *peers]:
            r = spawn(name, args)
            if r and (name not in best or r["tokens"] / r["seconds"] > best[name]["tokens"] / best[name]["seconds"]):
                best[name] = {**r, "peak_rss_mb": max(r["peak_rss_mb"], best.get(name, r)["peak_rss_mb"])}
    results = list(best.values())
    resume = spawn("resume", args)
    replay = spawn("replay", args) if "packed" in peers else None
    load_after = os.getloadavg()[0]

    import tinyllama

    short = tinyllama.Mix(work / "short").inspect()
    corpus_tokens = {c: short["corpora"][c]["tokens"] for c in CORPORA}
    print(f"\nloader: {MICRO} x {BLOCK}-token micro-batches as torch tensors, from page cache; "
          f"{size / 1e6:.0f} MB of text -> " + ", ".join(f"{c} {t / 1e6:.1f}M" for c, t in corpus_tokens.items())
          + " tokens, mixed 50/50")
    print(f"{args.seconds:g} s timed per contender (best of {args.rounds} interleaved rounds) after "
          f"{args.warmup} warm-up micro-batches; "
          f"load average {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores\n")
    rate = {r["name"]: r["tokens"] / r["seconds"] for r in results}
    labels = {**LABELS, "packed": packed_label(args.tinyllama_src)}
    width = max([42, *(len(labels.get(r["name"], r["name"])) + 2 for r in results)])
    print(f"{'reader':<{width}}{'Mtok/s':>8}{'ms/batch':>10}{'CPU/wall':>9}{'CPU use':>8}{'Mtok/CPU-s':>11}"
          f"{'peak RSS MB':>12}{'t=1 vs':>8}{'t=2 vs':>8}")
    for r in results:
        ratios = [f"{rate[t] / rate[r['name']]:.1f}x" if t in rate and not r["name"].startswith("tinyllama") else "-"
                  for t in ("tinyllama t=1", "tinyllama t=2")]
        print(f"{labels.get(r['name'], r['name']):<{width}}{rate[r['name']] / 1e6:>8.1f}"
              f"{r['seconds'] / r['batches'] * 1e3:>10.3f}{r['cpu'] / r['seconds']:>9.2f}"
              f"{cpu_use(r['cpu'], r['seconds']):>8}"
              f"{r['tokens'] / r['cpu'] / 1e6:>11.1f}{r['peak_rss_mb']:>12.0f}{ratios[0]:>8}{ratios[1]:>8}")
    if base:
        print(f"{'(import torch + numpy + tinyllama only)':<{width}}{'':>46}{base['peak_rss_mb']:>12.0f}")
    print("\nTokens counted as delivered (8 x 2049 per micro-batch). 'CPU/wall' = process CPU time, user + sys of all"
          f" threads / wall time while timed; 'CPU use' = that / {os.cpu_count()} cores.\n"
          "'t=N vs' = tinyllama's tokens/s with N loader threads / that reader's, both measured in this run."
          " The bar: >= 3x TinyLlama's reader (PackedDataset + CombinedDataset).")
    if not args.tinyllama_src and "packed" in rate:
        print("TinyLlama's reader here is a re-implementation of its lit_gpt/packed_dataset.py (same format and"
              " steps); --tinyllama-src PATH runs TinyLlama's own file.")
    print(f"Reference constant, not measured here: ~{H100_TOKENS_S // 1000}k tokens/s, what one H100 consumes"
          " training the 1.1B model (SPEC.md); ", end="")
    print(", ".join(f"{t} delivers {rate[t] / H100_TOKENS_S:,.0f}x" for t in ("tinyllama t=1", "tinyllama t=2")
                    if t in rate) + " that (the bar: >= 100x).")

    if resume:
        per_step = resume["batch_sequences"] // MICRO
        print(f"\nresume: 2T-token schedule, {resume['num_steps']:,} steps of {resume['batch_sequences']} sequences "
              f"({resume['batch_sequences'] * SEQ:,} tokens) = {per_step} micro-batches of {MICRO} per step; "
              f"peak RSS {resume['peak_rss_mb']:.0f} MB")
        if replay:
            per = replay["seconds"] / replay["batches"]
            print(f"measured: TinyLlama's resume replay ({packed_label(args.tinyllama_src)}), a fresh DataLoader "
                  f"iterated through {replay['batches']:,} micro-batches: {replay['seconds']:.2f} s wall "
                  f"({per * 1e3:.3f} ms each), {replay['cpu']:.2f} s CPU, peak RSS {replay['peak_rss_mb']:.0f} MB")
        print("tinyllama (measured): open the mix + locate step + deliver its first batch as a tensor (best of 5); "
              + ("replay columns: EXTRAPOLATED linearly from the measured replay above" if replay
                 else "replay: not measured (TinyLlama's reader did not run)"))
        print(f"{'step':>10}{'tinyllama: whole batch':>24}{'one micro-batch':>17}{'replay, 1 rank (extrap.)':>26}"
              f"{'replay, 8/step (extrap.)':>26}")
        for step in (1000, 1_000_000):
            whole = resume["latency"][f"{step}/1"]
            micro = resume["latency"][f"{step}/{per_step}"]
            one = eight = "-"
            if replay:
                n1, n8 = step * per_step, step * 8
                one = f"{_dur(per * n1)} (x{n1 / replay['batches']:,.0f})"
                eight = f"{_dur(per * n8)} (x{n8 / replay['batches']:,.0f})"
            print(f"{step:>10,}{whole * 1e3:>21.1f} ms{micro * 1e3:>14.1f} ms{one:>26}{eight:>26}")
        if replay:
            print(f"replay = TinyLlama's resume (iterate every micro-batch since step 0): the measured "
                  f"{replay['batches']:,}-micro-batch replay scaled by (micro-batches to replay) / "
                  f"{replay['batches']:,} (the factor in brackets); not measured at those steps. '1 rank' replays "
                  f"all {per_step} micro-batches of a step; '8/step' is a rank of TinyLlama's 16-GPU run "
                  f"(1024-sequence batch / (16 x {MICRO})).")


def _dur(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


if __name__ == "__main__":
    main()
