"""The cost of a family: one `mix build` of the TinyLlama v1.1 family spec (trunk + branches v1_1,
math_code, chinese) against the three single-variant builds one after another, on the same
corpora, cores and settings (the model cards' stages, SlimPajama's near-dedup parameters).

The family reads, filters, dedups, tokenizes and packs each corpus once; the three variants
build SlimPajama three times. The bar: the family's wall time at most 0.75x the three builds',
and its disk one copy of each corpus.

    python benchmarks/family_build.py [--slimpajama-mb 200] [--skypile-mb 50] [--workers 2]

Inputs: SlimPajama and SkyPile from the shared corpora scaled to the given sizes (perturbed
copies, see _data.py; SlimPajama dominates, as it does at full scale: 900 GB of the v1.1 recipe's
inputs), StarCoder's parquet and proof-pile as they are. Each build runs in its own process;
printed per build: wall, CPU use, peak RSS, disk of the output. Figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import SHARED, cpu_use, scaled_named_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

STAGES = {  # the model cards' stages after the trunk, per variant: (weights, ramp)
    "v1_1": ({"slimpajama": 1.0}, None),
    "math_code": ({"slimpajama": 0.75, "starcoder": 0.15, "proofpile": 0.10}, "6B"),
    "chinese": ({"slimpajama": 0.5, "skypile": 0.5}, "6B"),
}


def corpus_tables(data: dict[str, Path], names: list[str], dedup: str) -> str:
    text = {"starcoder": 'text = "content"\n'}
    return "".join(f'\n[corpora.{n}]\npaths = ["{data[n]}"]\n{text.get(n, "")}dedup = "{dedup}"\nholdout_docs = 20\n'
                   for n in names)


def stage(table: str, name: str, tokens: str, batch: int, weights: dict[str, float], ramp: str | None) -> str:
    w = ", ".join(f"{k} = {v}" for k, v in weights.items())
    return (f"\n[[{table}]]\nname = \"{name}\"\ntokens = \"{tokens}\"\nbatch_tokens = {batch}\nweights = {{ {w} }}\n"
            + (f'ramp_tokens = "{ramp}"\n' if ramp else ""))


def header(name: str, tokenizer: Path) -> str:
    return f'name = "{name}"\nseed = 3407\nseq_len = 2048\ntokenizer = "{tokenizer}"\n'


def variant_stages(table: str, variant: str) -> str:
    weights, ramp = STAGES[variant]
    return (stage(table, "continual", "350B", 1_835_008, weights, ramp)
            + stage(table, "cooldown", "150B", 7_340_032, weights, None))


def write_specs(work: Path, data: dict[str, Path], tokenizer: Path, dedup: str) -> dict[str, Path]:
    trunk = stage("stages", "basic", "1.5T", 1_835_008, {"slimpajama": 1.0}, None)
    specs = {}
    family = header("family", tokenizer) + corpus_tables(data, list(data), dedup) + trunk
    for variant in STAGES:
        family += variant_stages(f"branches.{variant}.stages", variant)
    specs["family"] = work / "family.toml"
    specs["family"].write_text(family)
    for variant, (weights, _) in STAGES.items():
        names = [n for n in data if n in weights]
        text = (header(variant, tokenizer) + corpus_tables(data, names, dedup) + trunk
                + variant_stages("stages", variant))
        specs[variant] = work / f"{variant}.toml"
        specs[variant].write_text(text)
    return specs


# Runs one build as its own child and prints that child's peak RSS (this process's RUSAGE_CHILDREN
# would keep the largest of every build so far).
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def build(spec: Path, out: Path, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec",
                        str(spec), "--out", str(out), "--workers", str(workers), "--quiet"],
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{spec.name}: mix build failed: {r.stderr.strip()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    lock = json.loads((out / "mix.json").read_text())
    tokens = sum(c["tokens"] for c in lock["corpora"])
    return {"wall": wall, "cpu": cpu, "rss_mb": int(r.stderr.strip().splitlines()[-1]) / 1024, "disk": disk,
            "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slimpajama-mb", type=int, default=200)
    ap.add_argument("--skypile-mb", type=int, default=50)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dedup", choices=("none", "exact", "near"), default="near",
                    help="Every corpus's dedup (near: the recipe's; the scaled copies are near-duplicates of each "
                         "other, so near keeps about one copy: none measures the tokenize-heavy path)")
    ap.add_argument("--work", type=Path, default=None, help="Scratch dir (default: a temp dir, removed after).")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="family-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sp_files, sp_bytes = scaled_named_corpus(work / "data/slimpajama", a.slimpajama_mb, "slimpajama")
        sk_files, sk_bytes = scaled_named_corpus(work / "data/skypile", a.skypile_mb, "skypile")
        data = {
            "slimpajama": work / "data/slimpajama/*.jsonl.zst",
            "starcoder": SHARED / "corpora/starcoderdata/**/*.parquet",
            "proofpile": SHARED / "corpora/proof-pile/train/*.jsonl.zst",
            "skypile": work / "data/skypile/*.jsonl.zst",
        }
        tokenizer = SHARED / "tokenizers/llama2/tokenizer.json"
        specs = write_specs(work, data, tokenizer, a.dedup)
        print(f"inputs: slimpajama {sp_bytes / 1e6:.0f} MB of text in {len(sp_files)} files, skypile "
              f"{sk_bytes / 1e6:.0f} MB, starcoder and proof-pile as shared; dedup {a.dedup}, seq_len 2048, "
              f"--workers {a.workers} on {os.cpu_count()} cores", flush=True)
        rows = {}
        for name in ("family", *STAGES):
            out = work / "out" / name
            shutil.rmtree(out, ignore_errors=True)
            rows[name] = build(specs[name], out, a.workers)
            r = rows[name]
            print(f"{name:10s} wall {r['wall']:7.2f} s  CPU {cpu_use(r['cpu'], r['wall']):>4s}  peak RSS "
                  f"{r['rss_mb']:6.0f} MB  disk {r['disk'] / 1e6:7.1f} MB  tokens {r['tokens']:,}", flush=True)
        three = {k: sum(rows[v][k] for v in STAGES) for k in ("wall", "cpu", "disk")}
        fam = rows["family"]
        print(f"{'3 variants':10s} wall {three['wall']:7.2f} s  CPU {cpu_use(three['cpu'], three['wall']):>4s}  "
              f"{'':21s}disk {three['disk'] / 1e6:7.1f} MB")
        ratio = fam["wall"] / three["wall"]
        print(f"family / three single-variant builds: wall {ratio:.2f}x (bar <= 0.75x: "
              f"{'met' if ratio <= 0.75 else 'NOT met'}), disk {fam['disk'] / three['disk']:.2f}x")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
