"""Dedup inside `mix build` on the real slice: counts, the report, planted near-duplicates,
determinism across workers and resume."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import zstandard
from conftest import CORPORA, build_aborted_at, tree_bytes, write_spec

import tinyllama
from tinyllama.data.build import build_mix

STAGES = '[[stages]]\ntokens = "100K"\nbatch_tokens = 4096\nweights = { sp = 1.0 }\n'


def rows_of(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def spec_for(tmp: Path, pattern: str, mode: str = "near", holdout: int = 0) -> Path:
    corpora = f'[corpora.sp]\npaths = ["{pattern}"]\ndedup = "{mode}"\nholdout_docs = {holdout}\n'
    return write_spec(tmp, corpora=corpora, stages=STAGES)


@pytest.fixture(scope="module")
def deduped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup")
    build_mix(spec_for(tmp, f"{CORPORA}/slimpajama/train/**/*.jsonl.zst"), tmp / "mix", workers=2, progress=False)
    return tinyllama.Mix(tmp / "mix")


def test_counts_and_report_agree(deduped):
    c = deduped.inspect()["corpora"]["sp"]
    report = deduped.dedup_report("sp")
    assert c["exact_duplicates"] > 0 and c["near_duplicates"] > 0
    assert report.columns == ["source", "row", "kept_source", "kept_row", "kind", "jaccard"]
    kinds = Counter(report["kind"].to_list())
    assert kinds["exact"] == c["exact_duplicates"] and kinds["near"] == c["near_duplicates"]
    assert c["docs_kept"] == c["docs_read"] - c["docs_filtered"] - c["exact_duplicates"] - c["near_duplicates"]
    # keep rule: the kept document always precedes the removed one in input order
    files = [f["path"] for f in deduped.manifest("sp")["files"]]
    for r in report.iter_rows(named=True):
        assert (files.index(r["kept_source"]), r["kept_row"]) < (files.index(r["source"]), r["row"])
        assert (r["kind"] == "exact") == (r["jaccard"] == 1.0) or r["kind"] == "near"
        if r["kind"] == "near":
            assert r["jaccard"] >= 0.6


def test_raw_exact_duplicates_are_all_caught(deduped):
    rows = [(f, i, r) for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")) for i, r in enumerate(rows_of(f))]
    rows = [(f, i, r) for f, i, r in rows if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"]
    seen, raw_dups = set(), set()
    for f, i, r in rows:
        if r["text"] in seen:
            raw_dups.add((f.relative_to(CORPORA / "slimpajama/train").as_posix(), i))  # named under its pattern dir
        seen.add(r["text"])
    removed = {(r["source"], r["row"]) for r in deduped.dedup_report("sp").iter_rows(named=True)}
    assert raw_dups and raw_dups <= removed
    kept = list(deduped.document_sources("sp"))
    assert not (set(kept) & removed)


def shingles(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def test_planted_near_duplicates(tmp_path):
    """Real documents with one short span edited (true 13-gram Jaccard >= 0.9) are removed
    as near duplicates of the original; copies with 40% of words edited are kept."""
    originals = [r for r in rows_of(CORPORA / "slimpajama/train/chunk1/example_train_0001.jsonl.zst")
                 if len(r["text"].split()) >= 400][:12]
    assert len(originals) >= 6
    rng = random.Random(0)

    def edit_span(text: str, fraction: float) -> str:
        words = text.split(" ")
        k = max(1, int(len(words) * fraction))
        start = rng.randrange(len(words) - k)
        words[start:start + k] = [f"edited{rng.randrange(10**6)}" for _ in range(k)]
        return " ".join(words)

    def edit_scattered(text: str, fraction: float) -> str:
        words = text.split(" ")
        for i in rng.sample(range(len(words)), int(len(words) * fraction)):
            words[i] = f"edited{rng.randrange(10**6)}"
        return " ".join(words)

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in originals))
    light = [{"text": edit_span(r["text"], 0.01)} for r in originals]
    heavy = [{"text": edit_scattered(r["text"], 0.4)} for r in originals]
    (data / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in light + heavy))
    build_mix(spec_for(tmp_path, f"{data}/*.jsonl"), tmp_path / "mix", workers=2, progress=False)
    report = tinyllama.Mix(tmp_path / "mix").dedup_report("sp")
    removed = {(Path(r["source"]).name, r["row"]): r for r in report.iter_rows(named=True)}
    n = len(originals)
    truth = [jaccard(o["text"], c["text"]) for o, c in zip(originals, light)]
    high = [i for i in range(n) if truth[i] >= 0.9]
    assert len(high) >= n // 2, truth
    caught = [i for i in high if ("b.jsonl", i) in removed]
    # 9 bands x 13 rows make a pair at J = 0.9 a candidate with p = 0.93
    assert len(caught) >= len(high) - 1, (caught, high, truth)
    for i in caught:
        r = removed[("b.jsonl", i)]
        assert r["kind"] == "near" and r["kept_source"].endswith("a.jsonl") and r["kept_row"] == i
        assert abs(r["jaccard"] - truth[i]) < 0.15
    assert max(jaccard(o["text"], c["text"]) for o, c in zip(originals, heavy)) < 0.5
    assert not any(("b.jsonl", n + i) in removed for i in range(n)), "40%-edited copies must be kept"


def test_same_report_and_shards_with_1_and_2_workers(tmp_path, deduped):
    build_mix(spec_for(tmp_path, f"{CORPORA}/slimpajama/train/**/*.jsonl.zst"), tmp_path / "mix", workers=1,
              progress=False)
    for rel in ["corpora/sp/dedup_report.parquet", "corpora/sp/manifest.json", "mix.json",
                "corpora/sp/shard-00000.bin"]:
        assert (tmp_path / "mix" / rel).read_bytes() == (deduped.path / rel).read_bytes(), rel


def test_exact_mode_removes_no_near_duplicates(tmp_path):
    build_mix(spec_for(tmp_path, f"{CORPORA}/slimpajama/train/**/*.jsonl.zst", mode="exact"), tmp_path / "mix",
              workers=2, progress=False)
    c = tinyllama.Mix(tmp_path / "mix").inspect()["corpora"]["sp"]
    assert c["exact_duplicates"] > 0 and c["near_duplicates"] == 0


def test_killed_during_dedup_then_resumed_gives_identical_bytes(tmp_path, deduped):
    """Near dedup on two workers, killed after the first file's fingerprints, after the dedup
    decision, after a staged part and after a shard, each run resuming the one before."""
    spec = spec_for(tmp_path, f"{CORPORA}/slimpajama/train/**/*.jsonl.zst")
    build_aborted_at(spec, tmp_path / "mix", ["fingerprint:1", "dedup:1", "part:1", "shard:1"])
    assert tree_bytes(tmp_path / "mix") == tree_bytes(deduped.path)
