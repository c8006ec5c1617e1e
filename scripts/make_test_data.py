"""Cut the small real-data slice that the test suite and the demo use (python/tests/data/).

Run once from the repo root with the shared corpora at ../shared/data; the output is
committed, so the tests never read ../shared. Deterministic: the same input gives the same
slice. Provenance of the texts: see ../shared/data/README.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

SHARED = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
OUT = Path("python/tests/data")


def read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if path.suffix == ".zst":
        data = zstandard.ZstdCompressor(level=19).compress(data)
    path.write_bytes(data)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    corp = SHARED / "corpora"
    # SlimPajama-shaped: fortunes, plus Debian READMEs/copyright texts (real exact and near
    # duplicates), plus real Python files labelled RedPajamaGithub (the set TinyLlama dropped;
    # the shared sample has none, so we plant them to exercise the exclude filter).
    sp = corp / "slimpajama/train/chunk1"
    fortunes = read_jsonl(sp / "example_train_0000.jsonl.zst")[:500]
    debian = [r for r in read_jsonl(sp / "example_train_0007.jsonl.zst") if len(r["text"]) < 6000][:700]
    code = pq.read_table(corp / "starcoderdata/python/train-00001-of-00004.parquet").slice(0, 30)
    github = [
        {"text": c, "meta": {"redpajama_set_name": "RedPajamaGithub", "source": "github/" + p}}
        for c, p in zip(code.column("content").to_pylist(), code.column("max_stars_repo_path").to_pylist())
        if len(c) < 6000
    ][:12]
    mixed = debian[:350] + github[:6] + debian[350:] + github[6:]
    write_jsonl(OUT / "corpora/slimpajama/train/chunk1/example_train_0000.jsonl.zst", fortunes)
    write_jsonl(OUT / "corpora/slimpajama/train/chunk1/example_train_0001.jsonl.zst", mixed)
    # SkyPile-shaped: plain JSONL, Chinese.
    sky = read_jsonl(corp / "skypile/2023-01.jsonl")
    write_jsonl(OUT / "corpora/skypile/2023-01.jsonl", [r for r in sky if len(r["text"]) < 3000][:400])
    write_jsonl(OUT / "corpora/skypile/2023-04.jsonl", read_jsonl(corp / "skypile/2023-04.jsonl")[:150])
    # proof-pile-shaped: zstd JSONL with meta.
    pp = [r for r in read_jsonl(corp / "proof-pile/train/proofpile_train_0000.jsonl.zst") if len(r["text"]) < 20000]
    write_jsonl(OUT / "corpora/proof-pile/train/proofpile_train_0000.jsonl.zst", pp[:40])
    # StarCoderData-shaped: parquet with the real schema, zstd pages.
    table = pq.read_table(corp / "starcoderdata/python/train-00000-of-00004.parquet")
    small = table.filter(pc.less(pc.utf8_length(table.column("content")), 12000))  # keep the slice small
    (OUT / "corpora/starcoderdata/python").mkdir(parents=True, exist_ok=True)
    pq.write_table(small.slice(0, 80), OUT / "corpora/starcoderdata/python/train-00000-of-00004.parquet",
                   compression="zstd", row_group_size=32)
    # The Llama 2 tokenizer, zstd-compressed (3.6 MB -> 0.4 MB); tinyllama reads .json.zst directly.
    tok = (SHARED / "tokenizers/llama2/tokenizer.json").read_bytes()
    (OUT / "tokenizers/llama2").mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizers/llama2/tokenizer.json.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(tok))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
