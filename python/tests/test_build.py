"""`mix build` end to end on the real slice: exact tokens, filters, determinism, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import CORPORA, build_aborted_at, tree_bytes, write_spec

import tinyllama
from tinyllama import _core
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec
from tinyllama.errors import InputError, ShardError, TokenizerError


def read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    spec = write_spec(tmp)
    build_mix(spec, tmp / "mix", workers=2, progress=False)
    return tmp / "mix"


def test_documents_match_the_hf_tokenizer(built, hf_tokenizer):
    mix = tinyllama.Mix(built)
    for name, files, field in [
        ("skypile", sorted((CORPORA / "skypile").glob("*.jsonl")), "text"),
        ("slimpajama", sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")), "text"),
    ]:
        rows = [r for f in files for r in read_jsonl(f)]
        rows = [r for r in rows if r.get("meta", {}).get("redpajama_set_name") != "RedPajamaGithub"]
        expected = [[1] + e.ids + [2] for e in hf_tokenizer.encode_batch([r[field] for r in rows],
                                                                         add_special_tokens=False)]
        got = [d.tolist() for d in mix.documents(name)] + [d.tolist() for d in mix.documents(name, holdout=True)]
        assert len(got) == len(expected), name
        assert got == expected, name


def test_parquet_content_column(built, hf_tokenizer):
    pq = pytest.importorskip("pyarrow.parquet")
    texts = []
    for f in sorted((CORPORA / "starcoderdata").rglob("*.parquet")):
        texts += pq.read_table(f, columns=["content"]).column("content").to_pylist()
    expected = [[1] + e.ids + [2] for e in hf_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert [d.tolist() for d in tinyllama.Mix(built).documents("starcoder")] == expected


def test_manifest_counts_and_filter(built):
    info = tinyllama.Mix(built).inspect()
    sp = info["corpora"]["slimpajama"]
    rows = [r for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")) for r in read_jsonl(f)]
    github = sum(r["meta"]["redpajama_set_name"] == "RedPajamaGithub" for r in rows)
    assert github > 0
    assert sp["docs_read"] == len(rows)
    assert sp["docs_filtered"] == github
    assert sp["docs_kept"] == len(rows) - github
    assert sp["docs_holdout"] == 10
    assert sp["shards"] >= 2  # shard_tokens = 50K forces several
    mix = tinyllama.Mix(built)
    assert sp["tokens"] == sum(len(d) for d in mix.documents("slimpajama"))
    assert info["tokenizer_sha256"] == tinyllama.Tokenizer(mix.tokenizer_path).sha256
    assert info["seq_len"] == 128 and info["dtype"] == "u16"
    # provenance: every document names its input file and row
    sources = list(mix.document_sources("slimpajama"))
    first = "chunk1/example_train_0000.jsonl.zst"  # its path under its pattern's dir, slimpajama/train
    assert sources[0] == (first, 0)
    assert sources[-1][0].endswith("example_train_0001.jsonl.zst")
    assert [r for f, r in sources if f == first] == list(range(len([1 for f, _ in sources if f == first])))


def test_same_bytes_whatever_the_workers_and_the_directory(tmp_path, built):
    spec = write_spec(tmp_path)
    build_mix(spec, tmp_path / "w1", workers=1, progress=False)
    one, two = tree_bytes(tmp_path / "w1"), tree_bytes(built)
    assert one.keys() == two.keys()
    assert one == two
    # nothing in the data names where it was built
    assert not any(str(tmp_path).encode() in b for b in one.values())


def test_progress_shows_every_stage_complete(tmp_path):
    """Without a terminal the build prints plain lines, and every stage's final counts appear,
    however fast the stage was (a stage may start and end between two polls)."""
    import io

    spec = write_spec(tmp_path, '[dedup]\nngram = 5\n')
    spec.write_text(spec.read_text().replace("holdout_docs = 10\n", 'holdout_docs = 10\ndedup = "near"\n', 1))
    out = io.StringIO()
    build_mix(spec, tmp_path / "mix", workers=2, stream=out)
    lines = out.getvalue().splitlines()
    for stage in ["fingerprint slimpajama", "tokenize slimpajama", "tokenize skypile", "tokenize starcoder",
                  "pack slimpajama", "pack skypile", "pack starcoder"]:
        done = [ln for ln in lines if ln.startswith(stage + ":")]
        assert done, f"no line for {stage}: {lines}"
        counts = done[-1].split("files ")[1].split()[0]
        assert counts.split("/")[0] == counts.split("/")[1], done[-1]  # its final line: all files done


def test_rebuild_is_a_no_op_and_verify_passes(built):
    summary = build_mix(Path(built).parent / "spec.toml", built, workers=2, progress=False)
    assert summary["up_to_date"]
    tinyllama.Mix(built).verify()


def test_flipped_byte_is_reported_with_the_shard_name(tmp_path, built):
    copy = tmp_path / "mix"
    shutil.copytree(built, copy)
    shard = copy / "corpora/skypile/shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-00000.bin.*checksum"):
        tinyllama.Mix(copy).verify()


def test_interrupted_staging_is_resumed_to_the_same_bytes(tmp_path, built):
    """A build cut short leaves committed parts, packed shards of a finished corpus and stray
    .tmp files, and no mix.json; a rerun resumes and finishes identically."""
    spec = write_spec(tmp_path)
    out = tmp_path / "mix"
    plan = _core.BuildPlan(json.dumps(load_spec(spec).build_config(out, 1), sort_keys=True))
    assert not plan.prepare()
    for c, (_name, n_files, _deduped) in enumerate(plan.corpora()):
        for i in range(n_files if c == 0 else n_files // 2):
            plan.tokenize(c, i)
    plan.pack_shard(0, plan.pack_layout(0)[0])
    (out / ".staging/skypile/parts/000001.bin.tmp").write_bytes(b"a torn write")
    summary = build_mix(spec, out, workers=1, progress=False)
    assert summary["files_processed"] > 0 and summary["files_resumed"] > 0
    assert tree_bytes(out) == tree_bytes(built)
    assert not list(out.rglob("*.tmp"))


def test_a_dir_that_lost_its_mix_json_is_not_a_mix_dir(tmp_path, built):
    """A finished build drops its staging, so a dir without mix.json nor .staging was not left
    by a build: it is refused untouched (a build deletes nothing it did not create)."""
    out = tmp_path / "mix"
    shutil.copytree(built, out)
    (out / "mix.json").unlink()
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}  # noqa: E731 (.lock too)
    before = files()
    with pytest.raises(tinyllama.SpecError, match="not a mix dir"):
        build_mix(Path(built).parent / "spec.toml", out, workers=1, progress=False)
    assert files() == before


def test_killed_again_and_again_then_resumed_gives_identical_bytes(tmp_path, built):
    """Two workers, three corpora (jsonl.zst with a filter, jsonl, parquet): the build dies
    after a staged part, after a shard, after a manifest and with everything but mix.json
    written, each run resuming the one before; the last run ends with the bytes of a build
    never interrupted."""
    spec = write_spec(tmp_path)
    out = tmp_path / "mix"
    build_aborted_at(spec, out, ["part:2", "part:1", "shard:2", "manifest:1", "lock:1"])
    assert tree_bytes(out) == tree_bytes(built)
    assert not list(out.rglob("*.tmp"))


# --- bad input -------------------------------------------------------------------------------


def one_corpus_spec(tmp_path: Path, pattern: str, extra: str = "") -> Path:
    corpora = f'[corpora.c]\npaths = ["{pattern}"]\n{extra}\n'
    stages = '[[stages]]\ntokens = "100K"\nbatch_tokens = "4K"\nweights = { c = 1.0 }\n'
    return write_spec(tmp_path, corpora=corpora, stages=stages)


def real_lines(n: int = 20) -> list[bytes]:
    path = CORPORA / "skypile/2023-01.jsonl"
    return path.read_bytes().splitlines(keepends=True)[:n]


@pytest.mark.parametrize(
    "name, corrupt, message",
    [
        ("trunc.jsonl", lambda ls: b"".join(ls[:5]) + ls[5][:40], r"trunc\.jsonl: line 6: .*truncated"),
        ("notjson.jsonl", lambda ls: b"".join(ls[:3]) + b"this is not json\n" + b"".join(ls[3:]),
         r"notjson\.jsonl: line 4: .*JSON"),
        ("utf8.jsonl", lambda ls: b"".join(ls[:2]) + ls[2][:30] + b"\xff\xfe" + ls[2][30:],
         r"utf8\.jsonl: line 3: .*UTF-8"),
        ("nofield.jsonl", lambda ls: b"".join(ls[:7]) + b'{"body": "x"}\n', r"nofield\.jsonl: line 8: .*text"),
        ("empty.jsonl", lambda ls: b"", r"empty\.jsonl.*empty"),
    ],
)
def test_bad_jsonl_names_file_and_line_or_is_counted(tmp_path, name, corrupt, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_bytes(corrupt(real_lines()))
    (data / "good.jsonl").write_bytes(b"".join(real_lines(40)[20:]))  # so the corpus is not empty
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl")
    with pytest.raises(InputError, match=message):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out/mix.json").exists()
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl", 'on_error = "skip"')
    build_mix(spec, tmp_path / "out2", workers=1, progress=False)
    manifest = tinyllama.Mix(tmp_path / "out2").manifest("c")
    assert manifest["totals"]["docs_skipped"] == 1
    assert manifest["skipped"][0]["file"].endswith(name)
    assert manifest["skipped"][0]["reason"]


def test_corrupt_zstd_is_reported(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    raw = (CORPORA / "slimpajama/train/chunk1/example_train_0000.jsonl.zst").read_bytes()
    bad = bytearray(raw)
    for i in range(len(bad) // 2, len(bad) // 2 + 64):
        bad[i] ^= 0xA5
    (data / "bad.jsonl.zst").write_bytes(bytes(bad))
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl.zst")
    with pytest.raises(InputError, match=r"bad\.jsonl\.zst"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)


def test_wrong_parquet_column_lists_the_schema(tmp_path):
    spec = one_corpus_spec(tmp_path, f"{CORPORA}/starcoderdata/**/*.parquet")  # text = "text": wrong
    with pytest.raises(InputError, match=r"train-00000-of-00004\.parquet.*text.*content"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)


def test_huge_document_is_an_error_or_a_counted_skip(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = real_lines(4)
    big = json.dumps({"text": (json.loads(lines[0])["text"] + "\n") * 40_000}).encode() + b"\n"
    (data / "big.jsonl").write_bytes(lines[1] + big + lines[2])
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl", 'max_doc_bytes = "1M"')
    with pytest.raises(InputError, match=r"big\.jsonl: line 2: .*max_doc_bytes"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl", 'max_doc_bytes = "1M"\non_error = "skip"')
    build_mix(spec, tmp_path / "out2", workers=1, progress=False)
    totals = tinyllama.Mix(tmp_path / "out2").manifest("c")["totals"]
    assert (totals["docs_read"], totals["docs_skipped"], totals["docs_kept"]) == (3, 1, 2)


def test_missing_tokenizer_and_unmatched_glob(tmp_path):
    spec = one_corpus_spec(tmp_path, f"{CORPORA}/skypile/*.jsonl")
    spec.write_text(spec.read_text().replace("tokenizer.json.zst", "nope.json"))
    with pytest.raises(TokenizerError, match="nope.json"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)
    spec = one_corpus_spec(tmp_path, f"{CORPORA}/skypile/*.jsonl.nothing")
    with pytest.raises(tinyllama.SpecError, match=r"\*\.jsonl\.nothing"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)


def test_unmatched_glob_names_the_spec_and_the_key_and_leaves_nothing_behind(tmp_path):
    """A pattern that matches no file is reported against the spec file and the corpus's
    `paths` key, in one line; the failed first build removes the out dir it created (and its
    parents), and only the lock file it created in an existing empty dir."""
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("skypile/*.jsonl", "skypile-typo/*.jsonl"))
    out = tmp_path / "new/out"
    with pytest.raises(tinyllama.SpecError) as e:
        build_mix(spec, out, workers=1, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{spec}: key 'corpora.skypile.paths': pattern '{CORPORA}/skypile-typo/*.jsonl' "
                          "matches no file"), msg
    assert "\n" not in msg
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)  # the user's empty dir: kept, and left empty
    with pytest.raises(tinyllama.SpecError):
        build_mix(spec, out, workers=1, progress=False)
    assert out.is_dir() and list(out.iterdir()) == []
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out",
                        str(tmp_path / "cli-out"), "--workers", "1"], capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and lines == [f"error: {msg}"], r.stderr
    assert not (tmp_path / "cli-out").exists()


def test_a_failed_build_keeps_what_it_did_not_create_and_its_resumable_work(tmp_path):
    """Only a dir that holds nothing but the lock is tidied: a failure after the build staged
    work keeps it (a rerun resumes), and a dir that had a lock file before keeps it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.jsonl").write_bytes(b"".join(real_lines(20)))
    (data / "zbad.jsonl").write_bytes(b"".join(real_lines(3)) + b"this is not json\n")
    spec = one_corpus_spec(tmp_path, f"{data}/*.jsonl")
    with pytest.raises(InputError, match=r"zbad\.jsonl: line 4"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)
    left = {p.name for p in (tmp_path / "out").iterdir()}
    assert ".lock" in left and left - {".lock", "build.log"}, left  # the staged work is still there
    (tmp_path / "old").mkdir()
    (tmp_path / "old/.lock").write_text("")
    spec = one_corpus_spec(tmp_path, f"{CORPORA}/skypile/*.jsonl.nothing")
    with pytest.raises(tinyllama.SpecError, match="corpora.c.paths"):
        build_mix(spec, tmp_path / "old", workers=1, progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == [".lock"]


def test_tokenizer_that_does_not_fit_the_dtype(tmp_path):
    spec = one_corpus_spec(tmp_path, f"{CORPORA}/skypile/*.jsonl")
    text = spec.read_text().replace('seq_len = 128', 'seq_len = 128\ndtype = "u16"')
    # a vocabulary of 70k tokens: the real Llama vocab plus added tokens
    import zstandard as zs
    from conftest import TOKENIZER_ZST

    tok = json.loads(zs.ZstdDecompressor().decompress(TOKENIZER_ZST.read_bytes()))
    for i in range(70_000 - 32_000):
        tok["model"]["vocab"][f"<extra_{i}>"] = 32_000 + i
    big = tmp_path / "big-tokenizer.json"
    big.write_text(json.dumps(tok))
    spec.write_text(text.replace(str(TOKENIZER_ZST), str(big)))
    with pytest.raises(TokenizerError, match=r"big-tokenizer\.json.*does not fit dtype"):
        build_mix(spec, tmp_path / "out", workers=1, progress=False)


def test_cli_inspect_json_and_errors(built):
    out = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "inspect", str(built), "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert set(info["corpora"]) == {"slimpajama", "skypile", "starcoder"}
    table = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "inspect", str(built)],
                           capture_output=True, text=True, check=True).stdout
    assert "slimpajama" in table and "continual" in table
    bad = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "inspect", str(built / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not a built mix" in bad.stderr and "Traceback" not in bad.stderr


def test_documents_are_zero_copy_views(built):
    doc = next(tinyllama.Mix(built).documents("skypile"))
    assert isinstance(doc, np.ndarray) and doc.dtype == np.uint16
    assert not doc.flags.owndata and not doc.flags.writeable


# --- deterministic fault points (the TINYLLAMA_ABORT_AFTER test hook, rust/build/fault.rs) ---


DEDUP_CORPORA = f"""
[corpora.slimpajama]
paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
dedup = "near"
holdout_docs = 10

[corpora.skypile]
paths = ["{CORPORA}/skypile/*.jsonl"]
dedup = "exact"
"""
DEDUP_STAGES = """
[[stages]]
name = "basic"
tokens = "100K"
batch_tokens = "4K"
weights = { slimpajama = 0.5, skypile = 0.5 }
"""


@pytest.fixture(scope="module")
def built_with_dedup(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault-ref")
    out = d / "mix"
    build_mix(write_spec(d, corpora=DEDUP_CORPORA, stages=DEDUP_STAGES), out, workers=1, progress=False)
    return out


@pytest.mark.parametrize("point", ["fingerprint:2", "dedup:1", "dedup:2", "part:3", "shard:1", "manifest:1",
                                   "manifest:2"])
def test_abort_at_each_stage_boundary_then_resume_gives_identical_bytes(tmp_path, built_with_dedup, point):
    """The build process dies (abort: no cleanup) right after the given commit: some
    fingerprint stores, a dedup decision, some staged parts, a packed shard, a corpus's
    manifest. It leaves staging and no mix.json; a plain rerun finishes to the same bytes."""
    spec = write_spec(tmp_path, corpora=DEDUP_CORPORA, stages=DEDUP_STAGES)
    out = tmp_path / "mix"
    cmd = [sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out", str(out),
           "--workers", "1", "--quiet"]
    env = {**os.environ, "TINYLLAMA_ABORT_AFTER": point}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGABRT, r.stderr[-2000:]
    assert f"aborting after {point.replace(':', ' #')}" in r.stderr
    assert (out / ".staging").is_dir() and not (out / "mix.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_bytes(out) == tree_bytes(built_with_dedup)
    assert not (out / ".staging").exists()


def test_abort_before_mix_json_then_rerun_gives_identical_bytes(tmp_path, built_with_dedup):
    """`lock`: every manifest, report, schedule and the tokenizer written, mix.json not. The dir
    is not a mix yet (one line says so); a rerun writes the lock from what is there."""
    spec = write_spec(tmp_path, corpora=DEDUP_CORPORA, stages=DEDUP_STAGES)
    out = tmp_path / "mix"
    cmd = [sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out", str(out),
           "--workers", "1", "--quiet"]
    r = subprocess.run(cmd, env={**os.environ, "TINYLLAMA_ABORT_AFTER": "lock:1"}, capture_output=True, text=True,
                       check=False)
    assert r.returncode == -signal.SIGABRT and "aborting after lock #1" in r.stderr, r.stderr[-2000:]
    assert not (out / "mix.json").exists() and (out / ".staging").is_dir()
    for name in ("slimpajama", "skypile"):
        assert (out / "corpora" / name / "manifest.json").is_file()
    assert (out / "schedule.json").is_file() and (out / "tokenizer.json").is_file()
    with pytest.raises(tinyllama.TinyllamaError, match="mix.json") as e:
        tinyllama.Mix(out)
    assert "\n" not in str(e.value)
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_bytes(out) == tree_bytes(built_with_dedup)
    assert not (out / ".staging").exists()


def test_abort_after_mix_json_leaves_a_usable_mix_and_a_rerun_only_drops_the_staging(tmp_path, built_with_dedup):
    """`mix-json`: the lock is written, the staging not yet removed (the recovery in
    rust/build/mod.rs `prepare_report`). The mix is complete and readable as it is; a rerun
    finds it up to date, removes the staging and rewrites nothing."""
    spec = write_spec(tmp_path, corpora=DEDUP_CORPORA, stages=DEDUP_STAGES)
    out = tmp_path / "mix"
    cmd = [sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out", str(out),
           "--workers", "1", "--quiet"]
    r = subprocess.run(cmd, env={**os.environ, "TINYLLAMA_ABORT_AFTER": "mix-json:1"}, capture_output=True,
                       text=True, check=False)
    assert r.returncode == -signal.SIGABRT and "aborting after mix-json #1" in r.stderr, r.stderr[-2000:]
    assert (out / "mix.json").is_file() and (out / ".staging").is_dir()
    staged = {k: v for k, v in tree_bytes(out).items() if not k.startswith(".staging/")}
    assert staged == tree_bytes(built_with_dedup)
    mix = tinyllama.Mix(out)  # the previous good state: the complete mix, staging or not
    ref = tinyllama.Mix(built_with_dedup)
    assert mix.inspect() == ref.inspect()
    tokens, corpora = mix.batch(3)
    want_tokens, want_corpora = ref.batch(3)
    assert np.array_equal(tokens, want_tokens) and corpora == want_corpora
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".staging" not in p.parts}
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / ".staging").exists()
    assert tree_bytes(out) == tree_bytes(built_with_dedup)
    written.pop(out / ".lock", None)
    assert {p: p.stat().st_mtime_ns for p in written} == written  # up to date: nothing rewritten
