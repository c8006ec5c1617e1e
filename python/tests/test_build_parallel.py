"""`mix build` inside a file: one big file is spread over every thread and still gives the same
bytes; the in-flight cap bounds the work; progress counts each stage's own documents and the
bytes as they are read.

The one-big-file corpus is the slimpajama slice's rows, concatenated in input order into one
jsonl.zst, so it must also hold exactly the documents the many-file corpus holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard
from conftest import CORPORA, tree_bytes, write_spec

import tinyllama
from tinyllama import _core
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec

CORPORA_TOML = f"""
[corpora.big]
paths = ["big.jsonl.zst"]
exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
dedup = "near"
holdout_docs = 10

[corpora.many]
paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
dedup = "near"
holdout_docs = 10

[corpora.skypile]
paths = ["{CORPORA}/skypile/*.jsonl"]
dedup = "exact"
"""

STAGES = """
[[stages]]
name = "basic"
tokens = "100K"
batch_tokens = "4K"
weights = { big = 0.4, many = 0.3, skypile = 0.3 }
"""


def one_big_file(dir: Path) -> Path:
    rows = []
    for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")):
        raw = zstandard.ZstdDecompressor().stream_reader(f.read_bytes()).read()
        rows += [line for line in raw.decode().splitlines() if line.strip()]
    path = dir / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(("\n".join(rows) + "\n").encode()))
    return path


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("parallel")
    one_big_file(d)
    return write_spec(d, "[dedup]\nngram = 5\n", corpora=CORPORA_TOML, stages=STAGES)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "mix"
    build_mix(spec, out, workers=1, progress=False)
    return out


@pytest.mark.parametrize("workers,in_flight,in_flight_mb", [(2, None, None), (4, None, None), (2, 3, None),
                                                            (4, 1, None), (2, None, 1)])
def test_same_bytes_for_any_threads_and_in_flight_cap(spec, reference, tmp_path, workers, in_flight, in_flight_mb):
    """1, 2 and 4 threads, with the default caps and with caps far below a batch (3 and 1
    documents; 1 MiB of text, one batch at a time), on one big file and on many files: the same bytes."""
    out = tmp_path / "mix"
    build_mix(spec, out, workers=workers, progress=False, in_flight_docs=in_flight, in_flight_mb=in_flight_mb)
    assert tree_bytes(out) == tree_bytes(reference)


def test_one_big_file_holds_what_the_many_files_hold(reference):
    mix = tinyllama.Mix(reference)
    big, many = mix.inspect()["corpora"]["big"], mix.inspect()["corpora"]["many"]
    for key in ("docs_read", "docs_filtered", "exact_duplicates", "near_duplicates", "docs_kept", "tokens"):
        assert big[key] == many[key], key
    assert big["near_duplicates"] > 0  # the near-dup stage had work inside the one file
    assert [d.tolist() for d in mix.documents("big")] == [d.tolist() for d in mix.documents("many")]


def test_progress_counts_each_stage_once_and_bytes_as_read(spec, tmp_path):
    """Every stage reports its own documents (not the last stage's plus its own) and, for a
    jsonl.zst corpus, exactly the input file's bytes by its end, against a total that is the
    input's size."""
    config = load_spec(spec).build_config(tmp_path / "mix", 2)
    calls: list[tuple] = []
    _core.build_mix(json.dumps(config), lambda *a: calls.append(a), 0.01)
    final = {}
    for stage, done, total, docs, tokens, nbytes, bytes_total, seconds in calls:
        final[stage] = (done, total, docs, tokens, nbytes, bytes_total, seconds)
    info = tinyllama.Mix(tmp_path / "mix").inspect()["corpora"]["big"]
    size = (spec.parent / "big.jsonl.zst").stat().st_size
    fp = final["fingerprint big"]
    tok = final["tokenize big"]
    # fingerprinting sees the rows the filter let through; tokenizing reads every row
    assert fp[:3] == (1, 1, info["docs_read"] - info["docs_filtered"])
    assert tok[:3] == (1, 1, info["docs_read"])
    assert tok[3] == info["tokens"] + info["holdout_tokens"]
    for stage in (fp, tok):
        assert stage[4] == size and stage[5] == size  # bytes read, bytes total
        assert stage[6] >= 0
    assert "find duplicates big" in final and "pack big" in final
    # resumed files leave the total: a rebuild after a kill shows only the work left (none here)
    stages = [c[0] for c in calls]
    assert stages.index("fingerprint big") < stages.index("tokenize big")


def test_progress_line_shows_rates_and_eta():
    from tinyllama.data.progress import progress_line

    line = progress_line("tokenize web", 1, 4, 2000, 4_000_000, 50_000_000, 200_000_000, 10.0)
    assert "files 1/4" in line and "docs 2.0K (200/s)" in line
    assert "0.40M tok/s" in line and "50.0/200.0 MB (5.0 MB/s)" in line and "ETA 30s" in line


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_bad_lines_decoded_in_parallel_fail_or_skip_in_row_order(tmp_path, on_error):
    """Lines are decoded on the pool, batch by batch, in any order; still the error is the
    first bad line's (as a sequential read gives), and skipped rows are listed in row order."""
    from tinyllama.errors import InputError

    rows = []
    for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")):
        raw = zstandard.ZstdDecompressor().stream_reader(f.read_bytes()).read()
        rows += [line for line in raw.decode().splitlines() if line.strip()]
    bad = {300: '{"text": "cut here', 301: "not json at all", 900: '{"no_text": 1}'}
    lines = [bad.get(i, line) for i, line in enumerate(rows)]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    spec = write_spec(tmp_path, corpora=f"""
[corpora.web]
paths = ["bad.jsonl"]
on_error = "{on_error}"
""", stages=STAGES.replace("{ big = 0.4, many = 0.3, skypile = 0.3 }", "{ web = 1.0 }"))
    if on_error == "fail":
        with pytest.raises(InputError, match=r"bad\.jsonl: line 301: .*truncated|bad\.jsonl: line 301: "):
            build_mix(spec, tmp_path / "mix", workers=2, progress=False, in_flight_docs=5)
        return
    build_mix(spec, tmp_path / "mix", workers=2, progress=False, in_flight_docs=5)
    manifest = json.loads((tmp_path / "mix/corpora/web/manifest.json").read_text())
    assert [s["row"] for s in manifest["skipped"]] == sorted(bad)
    assert "missing text field" in manifest["skipped"][-1]["reason"]


@pytest.mark.parametrize("key", ["in_flight_docs", "in_flight_mb"])
def test_a_cap_below_one_is_one_line_before_anything_is_written(spec, tmp_path, key):
    from tinyllama.errors import SpecError

    out = tmp_path / "mix"
    with pytest.raises(SpecError, match=f"^{key}: must be >= 1, not 0$"):
        build_mix(spec, out, workers=2, progress=False, **{key: 0})
    assert not out.exists()
