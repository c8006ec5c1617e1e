"""`mix build` on Ray with 1 and 2 worker processes next to the local build, on the same
scaled corpus (near dedup on), so the overhead of the task path is visible. Every run must
give the same bytes; the benchmark checks that too.

    PYTHONPATH=... python benchmarks/ray_build.py [--mb 40] [--files 16] [--shared /work/shared/data]

Each contender runs in its own subprocess. Ray's cluster start-up is timed apart from the
build (a real cluster is already running when a build is submitted).

Then the band stage alone (`--bands-mb`, 0 to skip): one band-partition task over the same
committed fingerprint stores with 9, 3 and 1 of the 9 bands, each in a fresh process, with its
time and peak RSS over the process's own baseline (plan and tokenizer loaded): what one task
of a band-partitioned dedup costs per document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _data import SHARED, scaled_corpus, single_corpus_spec

RUNS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".log"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def child(kind: str, workers: int, spec: Path, out: Path) -> None:
    import tinyllama

    shutil.rmtree(out, ignore_errors=True)
    startup = 0.0
    if kind == "local":
        from tinyllama.data.build import build_mix

        t = time.perf_counter()
        summary = build_mix(spec, out, workers, progress=False)
        seconds = time.perf_counter() - t
    else:
        import ray

        from tinyllama.data.ray_build import build_mix_ray

        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        summary = build_mix_ray(spec, out, progress=False)
        seconds = time.perf_counter() - t
        ray.shutdown()
    tasks = sum(s["files"] for s in summary["stages"].values()) if kind == "ray" else 0
    info = tinyllama.Mix(out).inspect()["corpora"]["c"]
    print(json.dumps({"kind": kind, "workers": workers, "seconds": seconds, "startup": startup,
                      "docs": info["docs_read"], "tokens": info["tokens"], "digest": tree_digest(out),
                      "tasks": tasks}))


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def bands_child(spec: Path, out: Path, bands: int) -> None:
    """One band-partition task (bands 0..`bands`) over committed stores; `bands` = 0 sets up."""
    from tinyllama import _core
    from tinyllama.data.spec import load_spec

    plan = _core.BuildPlan(json.dumps(load_spec(spec).build_config(out, 1), sort_keys=True))
    if bands == 0:
        shutil.rmtree(out, ignore_errors=True)
        plan.prepare()
        _name, n_files, _ = plan.corpora()[0]
        for i in range(n_files):
            plan.fingerprint(0, i)
        print(json.dumps(plan.dedup_exact(0)))
        return
    for f in out.glob(".staging/c/dedup/bands-*.bin"):
        f.unlink()
    # Anonymous memory (sort buffers, union-find, edges; not the memory-mapped stores and key
    # indexes, which are clean page cache) is sampled while the task runs (the Rust stage
    # releases the GIL, so this thread keeps sampling).
    base_anon = _vm("RssAnon")
    peak = {"anon": base_anon}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon"] = max(peak["anon"], _vm("RssAnon"))
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.perf_counter()
    result = plan.dedup_bands(0, 0, bands)
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    print(json.dumps({"bands": bands, "seconds": seconds, "peak_mb": _vm("VmHWM"),
                      "anon_mb": max(peak["anon"], _vm("RssAnon")) - base_anon, **result}))


def band_table(args) -> None:
    data = args.work / f"data-{args.bands_mb}-{args.files}"
    _, size = scaled_corpus(data, args.bands_mb, args.files, shared=args.shared)
    work = args.work / "bands"
    work.mkdir(parents=True, exist_ok=True)
    spec = single_corpus_spec(work, data, args.shared / "tokenizers/llama2/tokenizer.json", dedup="near")
    rows = []
    for bands in (0, 9, 3, 1):
        proc = subprocess.run([sys.executable, __file__, "--bands-child", str(bands), str(spec), str(work / "mix")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"band stage ({bands} bands): failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            return
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    docs = rows[0]["docs"]
    print(f"\nband stage alone: one task over {docs:,} documents ({size / 1e6:.0f} MB of text), "
          f"{rows[0]['pairs']:,} exact duplicates left out\n")
    print(f"{'bands':>6}{'seconds':>9}{'docs/s':>12}{'edges':>8}{'peak RSS MB':>13}{'anon +MB':>10}"
          f"{'anon B/doc':>12}")
    for r in rows[1:]:
        print(f"{r['bands']:>6}{r['seconds']:>9.2f}{docs / r['seconds']:>12,.0f}{r['pairs']:>8,}{r['peak_mb']:>13.0f}"
              f"{r['anon_mb']:>10.1f}{r['anon_mb'] * 2**20 / docs:>12.0f}")
    print("\n'anon +MB' = peak anonymous memory (sort buffers, union-find, edges) above the process's own before the"
          "\ntask (plan + tokenizer loaded), sampled every 0.2 ms; the memory-mapped stores and key indexes are page"
          "\ncache and not counted. A partition's edges are a spanning forest of what its bands found: the counts"
          "\ndiffer, the components do not.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=40, help="MB of text to build")
    ap.add_argument("--files", type=int, default=16, help="input files (= tasks per stage)")
    ap.add_argument("--shared", type=Path, default=SHARED if SHARED.exists() else Path("/work/shared/data"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/ray_build"))
    ap.add_argument("--bands-mb", type=int, default=100, help="MB of text for the band-stage table (0: skip)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--bands-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bands_child:
        bands, spec, out = args.bands_child
        return bands_child(Path(spec), Path(out), int(bands))
    data = args.work / f"data-{args.mb}-{args.files}"
    paths, size = scaled_corpus(data, args.mb, args.files, shared=args.shared)
    spec = single_corpus_spec(args.work, data, args.shared / "tokenizers/llama2/tokenizer.json", dedup="near")
    if args.child:
        kind, workers = args.child[0], int(args.child[1])
        return child(kind, workers, spec, args.work / f"mix-{kind}-{workers}")
    results = []
    for kind, workers in RUNS:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(workers), "--mb", str(args.mb),
                               "--files", str(args.files), "--shared", str(args.shared), "--work", str(args.work)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{kind} x{workers}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\nmix build (near dedup + tokenize + pack) on {size / 1e6:.0f} MB of text, {len(paths)} jsonl.zst "
          f"files\n")
    print(f"{'build':<10}{'workers':>8}{'seconds':>9}{'docs/s':>10}{'Mtok/s':>8}{'vs local':>10}"
          f"{'ray start s':>12}{'tasks':>7}{'ms/task':>9}")
    base = {r["workers"]: r["seconds"] for r in results if r["kind"] == "local"}
    for r in results:
        ratio = f"{base[r['workers']] / r['seconds']:.2f}x" if r["workers"] in base else "-"
        start = f"{r['startup']:.1f}" if r["kind"] == "ray" else "-"
        tasks = r["tasks"] or "-"
        per_task = (f"{(r['seconds'] - base[r['workers']]) * r['workers'] / r['tasks'] * 1e3:.1f}"
                    if r["tasks"] and r["workers"] in base else "-")
        print(f"{r['kind']:<10}{r['workers']:>8}{r['seconds']:>9.2f}{r['docs'] / r['seconds']:>10,.0f}"
              f"{r['tokens'] / r['seconds'] / 1e6:>8.2f}{ratio:>10}"
              f"{start:>12}{tasks:>7}{per_task:>9}")
    same = len({r["digest"] for r in results}) == 1
    print(f"\n'vs local' = local seconds / this build's seconds at the same worker count (1.00x = no overhead);"
          f"\n'ms/task' = the extra time x workers / tasks: the cost of a task on this box."
          f"\nall outputs byte-identical: {same}")
    if not same:
        sys.exit(1)
    if args.bands_mb:
        band_table(args)


if __name__ == "__main__":
    main()
