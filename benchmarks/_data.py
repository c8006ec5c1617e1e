"""Benchmark inputs: the shared corpora scaled up, with a per-copy perturbation so that copies
are not byte-identical (dedup and caches still see realistic text, not replays)."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import zstandard


def default_shared() -> Path:
    """`shared/data` beside the project root, or beside any folder above it (a git worktree)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED = default_shared()


def read_docs(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def base_texts(shared: Path = SHARED) -> list[str]:
    texts = []
    for f in sorted((shared / "corpora/slimpajama").rglob("*.jsonl.zst")):
        texts += [d["text"] for d in read_docs(f)]
    for f in sorted((shared / "corpora/skypile").glob("*.jsonl")):
        texts += [d["text"] for d in read_docs(f)]
    return texts


def scaled_corpus(out: Path, megabytes: int, files: int = 16, shared: Path = SHARED,
                  skewed: bool = False) -> tuple[list[Path], int]:
    """Write about `megabytes` MB of text (SlimPajama + SkyPile) as `files` .jsonl.zst files;
    reuse if present. `skewed`: file k holds twice as much as file k+1 (half the text in the
    first file), as real dumps often are."""
    key = f"{megabytes}-{files}" + ("-skewed" if skewed else "")
    return _write_scaled(out, key, lambda: base_texts(shared), megabytes, files, skewed)


def tree_texts(root: Path, max_bytes: int | None = None) -> list[tuple[str, str]]:
    """(relative path, text) of every UTF-8 text file under `root`, in sorted path order: a real
    source tree as a corpus (e.g. Debian's linux-source-6.1, unpacked). Binary files (a NUL byte,
    or not UTF-8), empty files and files over `max_bytes` are left out."""
    docs = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if max_bytes is not None and path.stat().st_size > max_bytes:
            continue
        raw = path.read_bytes()
        if not raw or b"\0" in raw:
            continue
        try:
            docs.append((str(path.relative_to(root)), raw.decode()))
        except UnicodeDecodeError:
            continue
    return docs


def tree_corpus(out: Path, root: Path, files: int = 16, skewed: bool = False,
                max_bytes: int | None = None) -> tuple[list[Path], int]:
    """Every text file under `root` (up to `max_bytes` each) once (no copies, no perturbation),
    laid out as `files` .jsonl.zst files like `scaled_corpus`; reuse if present."""
    key = f"tree-{root.name}-{max_bytes}-{files}" + ("-skewed" if skewed else "")
    return _write_scaled(out, key, lambda: tree_texts(root, max_bytes), 0, files, skewed)


def _write_scaled(out: Path, key: str, texts_fn, megabytes: int, files: int,
                  skewed: bool = False) -> tuple[list[Path], int]:
    """`megabytes` > 0: perturbed copies of the texts up to that size; 0: `texts_fn` gives
    (id, text) pairs, written once each."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".complete-{key}"
    paths = [out / f"part-{i:03d}.jsonl.zst" for i in range(files)]
    if marker.exists():
        return paths, int(marker.read_text())
    texts = texts_fn()
    if not texts:
        raise FileNotFoundError(f"no texts for {out} (pass the shared data folder)")
    target = megabytes * 10**6
    lines: list[str] = []
    size = copy = 0
    if megabytes == 0:
        lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in texts]
        size = sum(len(t.encode()) for _, t in texts)
    while size < target:
        for i, t in enumerate(texts):
            doc = f"[{copy}] {t}"  # perturbed: not identical to any other copy
            lines.append(json.dumps({"id": f"{copy}-{i}", "text": doc}, ensure_ascii=False))
            size += len(doc.encode())
            if size >= target:
                break
        copy += 1
    if skewed:
        weights = [2.0 ** -k for k in range(files)]
        bounds = [0]
        for k in range(files):
            bounds.append(len(lines) if k == files - 1 else
                          bounds[-1] + max(1, round(len(lines) * weights[k] / sum(weights))))
    else:
        per = (len(lines) + files - 1) // files
        bounds = [min(k * per, len(lines)) for k in range(files + 1)]
    cctx = zstandard.ZstdCompressor(level=3)
    for k, p in enumerate(paths):
        p.write_bytes(cctx.compress(("\n".join(lines[bounds[k]:bounds[k + 1]]) + "\n").encode()))
    marker.write_text(str(size))
    return paths, size


def single_corpus_spec(work: Path, data: Path | None, tokenizer: Path, dedup: str = "none", *,
                       pattern: str | None = None, shard_tokens: str | None = None) -> Path:
    """A mix spec over the scaled .jsonl.zst files in `data` (or over `pattern`, a glob that may
    be an s3:// one), one corpus `c`, long enough a schedule that any corpus size fits."""
    spec = work / "spec.toml"
    # Absolute: the spec resolves relative paths from its own folder.
    pattern = pattern or f"{data.resolve()}/*.jsonl.zst"
    shards = f'shard_tokens = "{shard_tokens}"\n' if shard_tokens else ""
    spec.write_text(f"""name = "bench"
tokenizer = "{tokenizer.resolve()}"
seq_len = 2048
{shards}[corpora.c]
paths = ["{pattern}"]
dedup = "{dedup}"
[[stages]]
tokens = "1B"
batch_tokens = "1M"
weights = {{ c = 1.0 }}
""")
    return spec


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM: since its exec, unlike `ru_maxrss`, which keeps the
    parent's peak across fork + exec) and of its largest waited-for child, in MB."""
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def corpus_texts(corpus: str, shared: Path = SHARED) -> list[str]:
    """The texts of one shared corpus: "slimpajama" (English) or "skypile" (Chinese)."""
    pattern = {"slimpajama": "corpora/slimpajama/**/*.jsonl.zst", "skypile": "corpora/skypile/*.jsonl"}[corpus]
    return [d["text"] for f in sorted(shared.glob(pattern)) for d in read_docs(f)]


def scaled_named_corpus(out: Path, megabytes: int, corpus: str, files: int = 8,
                        shared: Path = SHARED) -> tuple[list[Path], int]:
    """Like `scaled_corpus`, over one shared corpus only (so a mix can weigh the two)."""
    return _write_scaled(out, f"{corpus}-{megabytes}-{files}", lambda: corpus_texts(corpus, shared), megabytes, files)


def cpu_seconds() -> float:
    """User + system CPU seconds so far of this process (all its threads), of its waited-for
    descendants, and (with psutil) of its live descendants and the ones they have waited for:
    take the difference around a timed part. The last part matters for pools started through a
    forkserver (datatrove's default): their workers are the forkserver's children, not ours."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    try:
        import psutil
    except ImportError:
        return total
    for proc in psutil.Process().children(recursive=True):
        try:
            c = proc.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


def cpu_use(cpu: float, wall: float, cores: int | None = None) -> str:
    """CPU use as printed by every benchmark: (user + sys) / wall / cores, in percent of the
    machine (100% = every core busy the whole time)."""
    cores = cores or os.cpu_count() or 1
    return f"{100 * cpu / wall / cores:.0f}%" if wall > 0 else "-"
