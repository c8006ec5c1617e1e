"""Whole `mix build` (read, decompress, parse, tokenize, write) against datatrove's and dolma's
equivalents on the same scaled corpus and the same cores. Each contender runs in its own
subprocess so peak RSS is its own.

    python benchmarks/build.py [--mb 100] [--workers 2] [--peers datatrove,dolma] [--dolma-python PATH]
                               [--layouts many,skewed,one] [--dedup none,near] [--tree DIR [--tree-max-kb N]]

Layouts of the same text: `many` (16 files of equal size), `skewed` (10 files, each half the
size of the one before: half the text in one file) and `one` (a single jsonl.zst). `--tree DIR`
takes a real source tree nobody here wrote instead (every UTF-8 text file once, a document each,
in path order; e.g. Debian's `linux-source-6.1`: `apt-get download linux-source-6.1`, unpack the
.deb and the tarball inside it). tinyllama
builds every layout with each `--dedup` mode (near = MinHash near-duplicates, SlimPajama's
parameters, the whole pipeline); the peers tokenize every layout (no dedup; they split work by
file, so one file is one task). The last table compares tinyllama's layouts: each one's wall
time against the `many` layout's with the same dedup (the bar: one file <= 1.1x), and its CPU
use (the bar: >= 90% of the cores busy on every layout).

dolma pins an old `tokenizers` (0.19), so it lives in a venv of its own (docs/benchmarks.md):
`--dolma-python` (or $TINYLLAMA_BENCH_DOLMA_PYTHON) names that venv's interpreter, and the
dolma contender runs `PATH -m dolma.cli tokens` (the `dolma` CLI) from it; without either, the
interpreter beside a `dolma` executable on PATH or beside this Python is used. tinyllama and
datatrove run in this interpreter.

That `tokenizers` cannot parse the Llama 2 tokenizer.json as saved by newer versions (BPE merges
stored as pairs); the parent then writes a copy with the merges as "a b" strings (a pure format
change: same vocab, same merge ranks) into the work dir, says so, and after the run checks that
the ids of 300 documents dolma wrote equal this interpreter's `tokenizers` on the original file.

dolma writes raw uint16 memmaps (`part-N-0000K.npy`, no .npy header) with a `.csv.gz` of
(start, end, id, src, line) per document beside each; tokens are counted from those rows, since a
memmap that got no document keeps its preallocated size (1 Gi tokens, sparse). With `--tokenizer.bos_token_id 1
--tokenizer.eos_token_id 2` each dolma document is BOS + text + EOS, as in a tinyllama mix, but
dolma strips leading/trailing whitespace first and drops empty documents.

datatrove's output is checked the same way: its `DocumentTokenizer` (no shuffling) writes one
uint16 `NNNNN_unshuffled.ds` per task with a `.ds.index` of uint64 document ends; task r reads
the r-th input file, in order. The ids of 300 documents spread over its output must equal this
interpreter's `tokenizers` on the original tokenizer.json (text + EOS: datatrove's
post-processor appends `</s>` and adds no BOS) and tinyllama's tokenizer on the same text.

CPU use = (user + sys CPU seconds of the contender's process and its workers) / wall
/ cores, over the build.

The bucket case (the same files read from an S3-compatible server on 127.0.0.1 against local disk,
and the loader from a cold and a warm shard cache) is `benchmarks/bucket.py`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, cpu_seconds, cpu_use, peak_rss_mb, read_docs, scaled_corpus, single_corpus_spec, tree_corpus

TOKENIZER = SHARED / "tokenizers/llama2/tokenizer.json"
DOLMA_PYTHON_ENV = "TINYLLAMA_BENCH_DOLMA_PYTHON"
BOS, EOS = 1, 2  # Llama 2's <s> and </s>


def run_tinyllama(data: Path, work: Path, workers: int, dedup: str = "none") -> tuple[int, int | None]:
    import tinyllama
    from tinyllama.data.build import build_mix

    spec = single_corpus_spec(work, data, TOKENIZER, dedup)
    # force: a previous run of another size left its (complete) mix here; this build replaces it
    build_mix(spec, work / "mix", workers, progress=False, force=True)
    totals = tinyllama.Mix(work / "mix").inspect()["corpora"]["c"]
    return totals["tokens"], totals["docs_kept"]


def run_datatrove(data: Path, work: Path, workers: int) -> tuple[int, int | None]:
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
    return total, None


def find_dolma_python(given: str | None) -> Path | None:
    """The interpreter of the venv dolma is installed in: `given`, else $TINYLLAMA_BENCH_DOLMA_PYTHON,
    else the `python` beside a `dolma` executable on PATH or beside this interpreter."""
    if given or os.environ.get(DOLMA_PYTHON_ENV):
        return Path(given or os.environ[DOLMA_PYTHON_ENV])
    beside = Path(sys.executable).parent / "dolma"
    exe = shutil.which("dolma") or (str(beside) if beside.exists() else None)
    return Path(exe).parent / "python" if exe else None


def _parses(python: Path, tokenizer: Path) -> subprocess.CompletedProcess:
    probe = "import sys; from tokenizers import Tokenizer; Tokenizer.from_file(sys.argv[1])"
    return subprocess.run([str(python), "-c", probe, str(tokenizer)], capture_output=True, text=True)


def dolma_tokenizer(python: Path, work: Path) -> tuple[Path, str]:
    """The tokenizer.json dolma's own `tokenizers` can read, and a line saying which it is: the
    original, or a copy in `work` with the BPE merges as "a b" strings instead of pairs."""
    if _parses(python, TOKENIZER).returncode == 0:
        return TOKENIZER, f"dolma read {TOKENIZER} as is"
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    merges = spec["model"].get("merges") or []
    if not merges or isinstance(merges[0], str):
        raise RuntimeError(f"dolma's tokenizers cannot read {TOKENIZER}: {_parses(python, TOKENIZER).stderr}")
    if any(" " in part for pair in merges for part in pair):
        raise RuntimeError("a merge has a space in it: cannot write it as an 'a b' string")
    spec["model"]["merges"] = [" ".join(pair) for pair in merges]
    converted = work / "dolma-tokenizer.json"
    converted.parent.mkdir(parents=True, exist_ok=True)
    converted.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    if (probe := _parses(python, converted)).returncode != 0:
        raise RuntimeError(f"dolma's tokenizers cannot read the converted {converted} either: {probe.stderr}")
    version = subprocess.run([str(python), "-c", "import tokenizers; print(tokenizers.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return converted, (f"dolma used a converted copy of the tokenizer ({converted}): its tokenizers {version} "
                       "cannot parse BPE merges stored as pairs, so they were rewritten as 'a b' strings")


def dolma_rows(out: Path) -> list[tuple[Path, int, int, str]]:
    """(memmap, start, end, doc id) for every document dolma wrote under `out`."""
    rows = []
    for meta in sorted(out.rglob("*.csv.gz")):
        with gzip.open(meta, "rt", newline="") as f:
            rows += [(meta.with_name(meta.name.removesuffix(".csv.gz") + ".npy"), int(start), int(end), doc_id)
                     for start, end, doc_id, *_ in csv.reader(f)]
    return rows


def run_dolma(data: Path, work: Path, workers: int, python: Path, tokenizer: Path) -> tuple[int, int | None]:
    # dolma imports nltk, which tries to download `punkt` when it is not installed; the tokenizer
    # does not use it, so an empty stand-in keeps the run offline.
    (work / "nltk_data/tokenizers/punkt").mkdir(parents=True)
    cmd = [str(python), "-m", "dolma.cli", "tokens", "--documents", *map(str, sorted(data.glob("*.jsonl.zst"))),
           "--destination", str(work / "out"), "--tokenizer.name_or_path", str(tokenizer),
           "--tokenizer.bos_token_id", str(BOS), "--tokenizer.eos_token_id", str(EOS),
           "--processes", str(workers), "--dtype", "uint16",
           "--work_dir.input", str(work / "dolma-in"), "--work_dir.output", str(work / "dolma-done")]
    with open(work / "dolma.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "NLTK_DATA": str(work / "nltk_data")})
    if proc.returncode != 0:
        raise SystemExit(f"dolma tokens exited {proc.returncode}; see {work / 'dolma.log'}")
    rows = dolma_rows(work / "out")
    return sum(end - start for _, start, end, _ in rows), len(rows)


def check_dolma_ids(work: Path, data: Path, docs: int = 300) -> str:
    """Compare the ids of `docs` documents dolma wrote (spread over its output) with BOS + this
    interpreter's `tokenizers` on the original tokenizer.json (of the stripped text, as dolma
    tokenizes) + EOS."""
    import numpy as np
    from tokenizers import Tokenizer

    rows = dolma_rows(work / "out")
    rows = rows[:: max(1, len(rows) // docs)][:docs]
    texts = {d["id"]: d["text"] for f in sorted(data.glob("*.jsonl.zst")) for d in read_docs(f)}
    hf = Tokenizer.from_file(str(TOKENIZER))
    memmaps = {p: np.memmap(p, dtype=np.uint16, mode="r") for p in {r[0] for r in rows}}
    same = sum(memmaps[p][start:end].tolist() == [BOS, *hf.encode(texts[i].strip(), add_special_tokens=False).ids,
                                                  EOS] for p, start, end, i in rows)
    return f"dolma ids: {same}/{len(rows)} sampled documents equal to tokenizers on the original tokenizer.json"


def check_datatrove_ids(work: Path, data: Path, docs: int = 300) -> str:
    """Compare the ids of `docs` documents datatrove wrote (spread over its output) with this
    interpreter's `tokenizers` on the original tokenizer.json (text, no special tokens, + EOS) and
    with tinyllama's tokenizer on the same text (+ EOS)."""
    import numpy as np
    from tokenizers import Tokenizer

    import tinyllama

    files = sorted(data.glob("*.jsonl.zst"))
    rows = []  # (tokens file, start, end, text)
    for rank, f in enumerate(files):
        ds = work / "out" / f"{rank:05d}_unshuffled.ds"
        if not ds.exists():
            continue
        ends = np.fromfile(f"{ds}.index", dtype=np.uint64).tolist()
        texts = [d["text"] for d in read_docs(f)]
        if len(ends) != len(texts):
            return f"datatrove ids: NOT CHECKED: {ds.name} has {len(ends)} documents, {f.name} {len(texts)}"
        rows += [(ds, start, end, t) for start, end, t in zip([0, *ends[:-1]], ends, texts)]
    if not rows:
        return "datatrove ids: NOT CHECKED: no NNNNN_unshuffled.ds output found"
    rows = rows[:: max(1, len(rows) // docs)][:docs]
    hf = Tokenizer.from_file(str(TOKENIZER))
    ours = tinyllama.Tokenizer(TOKENIZER)
    memmaps = {p: np.memmap(p, dtype=np.uint16, mode="r") for p in {r[0] for r in rows}}
    got = [memmaps[p][start:end].tolist() for p, start, end, _ in rows]
    texts = [t for *_, t in rows]
    want_hf = [[*e.ids, EOS] for e in hf.encode_batch(texts, add_special_tokens=False)]
    want_ours = [[*map(int, ids), EOS] for ids in ours.encode_batch(texts, add_special_tokens=False)]
    same_hf = sum(g == w for g, w in zip(got, want_hf))
    same_ours = sum(g == w for g, w in zip(got, want_ours))
    return (f"datatrove ids: {same_hf}/{len(rows)} sampled documents equal to tokenizers on the original "
            f"tokenizer.json (text + EOS), {same_ours}/{len(rows)} equal to tinyllama's tokenizer (text + EOS)")


RUNNERS = {"tinyllama": run_tinyllama, "datatrove": run_datatrove, "dolma": run_dolma}


LAYOUTS = {"many": {"files": 16}, "skewed": {"files": 10, "skewed": True}, "one": {"files": 1}}


def child(name: str, data: Path, work: Path, workers: int, extra: tuple) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    tokens, docs = RUNNERS[name.split(":")[0]](data, work, workers, *extra)
    seconds = time.perf_counter() - t0
    print(json.dumps({"name": name, "seconds": seconds, "cpu": cpu_seconds() - c0, "tokens": tokens, "docs": docs,
                      "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="MB of text to build")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--peers", default="datatrove,dolma")
    ap.add_argument("--work", type=Path, default=Path("bench-out/build"))
    ap.add_argument("--dolma-python", help=f"python of the venv dolma is installed in (default: ${DOLMA_PYTHON_ENV}, "
                                           "else the one beside a `dolma` executable on PATH or beside this python)")
    ap.add_argument("--dolma-tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layouts", default="many,skewed,one", help="of the same text: many, skewed, one")
    ap.add_argument("--tree", type=Path, help="build this source tree's text files instead of --mb of the shared "
                                              "corpora (e.g. Debian's linux-source-6.1, unpacked)")
    ap.add_argument("--tree-max-kb", type=int,
                    help="with --tree: leave out files over this size (the peers' HF tokenizers took 14.9 GB "
                         "on one of the Linux tree's 10-24 MB generated headers)")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds a contender may take before it is killed and reported as failed")
    ap.add_argument("--dedup", default="none,near", help="tinyllama's dedup modes to run (none, exact, near)")
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    ap.add_argument("--dedup-mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()  # the mix spec resolves its paths against its own folder
    if args.child:
        data_dir = args.work / f"data-{args.layout}"
        if args.child == "dolma":
            extra = (Path(args.dolma_python), Path(args.dolma_tokenizer))
        elif args.child == "tinyllama":
            extra = (args.dedup_mode,)
        else:
            extra = ()
        return child(args.child, data_dir, args.work / f"{args.child}-{args.layout}", args.workers, extra)
    results, notes = [], []
    if "datatrove" in args.peers.split(",") and importlib.util.find_spec("psutil") is None:
        notes.append("psutil is not installed (pip extra `bench`): datatrove's CPU use misses its process pool's "
                     "workers")
    layouts = [x for x in args.layouts.split(",") if x]
    sizes = {}
    for layout in layouts:
        if args.tree:
            max_bytes = args.tree_max_kb * 1024 if args.tree_max_kb else None
            files, sizes[layout] = tree_corpus(args.work / f"data-{layout}", args.tree.resolve(), max_bytes=max_bytes,
                                               **LAYOUTS[layout])
        else:
            files, sizes[layout] = scaled_corpus(args.work / f"data-{layout}", args.mb, **LAYOUTS[layout])
    dolma = None
    for name in [p for p in args.peers.split(",") if p]:
        if name == "dolma":
            python = find_dolma_python(args.dolma_python)
            has_dolma = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dolma') is None)"
            if not (python and python.exists()) or subprocess.run([str(python), "-c", has_dolma]).returncode:
                print(f"dolma: skipped (no python with dolma {'at ' + str(python) if python else 'found'}: "
                      f"pass --dolma-python or set ${DOLMA_PYTHON_ENV}, see docs/benchmarks.md)")
                continue
            try:
                tokenizer, note = dolma_tokenizer(python, args.work)
            except RuntimeError as e:
                print(f"dolma: failed ({e})")
                continue
            notes.append(note)
            dolma = ["--dolma-python", str(python), "--dolma-tokenizer", str(tokenizer)]
    runs = [("tinyllama", layout, d) for layout in layouts for d in args.dedup.split(",") if d]
    runs += [(p, layout, "none") for layout in layouts for p in args.peers.split(",")
             if p and (p != "dolma" or dolma)]
    for name, layout, dedup in runs:
        extra = dolma if name == "dolma" else []
        cmd = [sys.executable, __file__, "--child", name, "--mb", str(args.mb), "--workers", str(args.workers),
               "--work", str(args.work), "--layout", layout, "--dedup-mode", dedup, *extra]
        # A session of its own: on a timeout the contender and its worker processes go together
        # (a process pool whose worker the kernel's OOM killer took waits forever).
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            print(f"{name} ({layout}, dedup {dedup}): failed (no result after {args.timeout} s: killed)", flush=True)
            continue
        if proc.returncode != 0:
            print(f"{name} ({layout}, dedup {dedup}): failed ({err.strip().splitlines()[-1:] or proc.returncode})",
                  flush=True)
            continue
        r = json.loads(out.strip().splitlines()[-1])
        r.update(layout=layout, dedup=dedup)
        results.append(r)
        # As it comes, so a later contender that hangs or is killed does not take it along.
        print(f"done: {name} {layout} {dedup}: {r['seconds']:.2f} s, CPU use {cpu_use(r['cpu'], r['seconds'])}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if name == "dolma":
            notes.append(f"{layout}: " + check_dolma_ids(args.work / f"dolma-{layout}", args.work / f"data-{layout}"))
        if name == "datatrove":
            notes.append(f"{layout}: " + check_datatrove_ids(args.work / f"datatrove-{layout}",
                                                            args.work / f"data-{layout}"))
    size = sizes[layouts[0]]
    print(f"\nmix build on {size / 1e6:.0f} MB of text, layouts: "
          + ", ".join(f"{x} ({LAYOUTS[x]['files']} jsonl.zst files{', skewed' if LAYOUTS[x].get('skewed') else ''})"
                      for x in layouts) + f"; {args.workers} workers, {os.cpu_count()} cores\n")
    print(f"{'tool':<12}{'layout':<8}{'dedup':<7}{'seconds':>9}{'MB/s':>9}{'Mtok/s':>9}{'tokens':>14}"
          f"{'peak RSS MB':>13}{'CPU use':>9}{'speed vs':>10}")
    ours = {(r["layout"]): r["seconds"] for r in results if r["name"] == "tinyllama" and r["dedup"] == "none"}
    for r in results:
        base = ours.get(r["layout"])
        ratio = f"{r['seconds'] / base:.2f}x" if base and r["name"] != "tinyllama" else "-"
        mb_s = sizes[r["layout"]] / 1e6 / r["seconds"]
        print(f"{r['name']:<12}{r['layout']:<8}{r['dedup']:<7}{r['seconds']:>9.2f}{mb_s:>9.1f}"
              f"{r['tokens'] / 1e6 / r['seconds']:>9.2f}{r['tokens']:>14,}{r['peak_rss_mb']:>13.0f}"
              f"{cpu_use(r['cpu'], r['seconds']):>9}{ratio:>10}")
    print("\n'speed vs' = that tool's time / tinyllama's time (dedup none, same layout) in this run.\n"
          f"CPU use = (user + sys CPU seconds of the process and its workers) / wall / {os.cpu_count()}"
          " cores, over the build.")
    mine = {(r["layout"], r["dedup"]): r for r in results if r["name"] == "tinyllama"}
    if mine:
        print("\ntinyllama by layout (time / the many-file layout's with the same dedup):")
        for (layout, dedup), r in mine.items():
            many = mine.get(("many", dedup))
            vs = f"{r['seconds'] / many['seconds']:.2f}x" if many else "-"
            print(f"  {layout:<8}{dedup:<7}{r['seconds']:>8.2f}s  {vs:>6}  CPU use {cpu_use(r['cpu'], r['seconds'])}")
    results = [r for r in results if r["layout"] == layouts[0] and r["dedup"] == "none"]
    by_name = {r["name"]: r for r in results}
    if "tinyllama" in by_name and "dolma" in by_name:
        tl, dm = by_name["tinyllama"], by_name["dolma"]
        diff = dm["tokens"] - tl["tokens"]
        notes.append(f"tokens per document: both store BOS + text + EOS; dolma strips leading/trailing whitespace "
                     f"and drops empty documents: dolma {dm['docs']:,} docs, tinyllama {tl['docs']:,} docs, "
                     f"dolma - tinyllama = {diff:+,} tokens ({diff / max(tl['docs'], 1):+.4f} per document)")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
