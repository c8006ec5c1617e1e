"""Corpora read straight from a bucket (issue 27, item 1, and its faults from item 5), against the
suite's real S3-compatible server on 127.0.0.1 (moto's server mode; the `s3` fixture) and a
fault-injecting proxy in front of it: `paths = ["s3://bucket/prefix/**/*.jsonl.zst"]` is listed
with the same glob rules and order as local paths, read as streams (parquet through range reads),
and gives the same mix, byte for byte, as a local build of the same files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CORPORA, TOKENIZER_ZST, tree_bytes
from s3_server import FlakyProxy, free_port, one_line

from tinyllama import SpecError, _core
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec

STAGES = """
[[stages]]
name = "basic"
tokens = "20K"
batch_tokens = "2K"
weights = { web = 0.7, code = 0.3 }
"""


def make_inputs(root: Path) -> Path:
    """A small real slice in three formats: jsonl, jsonl.zst (one level down: `**`), and a
    parquet copy of StarCoder rows in several row groups; plus files no pattern should match."""
    pq = pytest.importorskip("pyarrow.parquet")
    (root / "web/sub").mkdir(parents=True)
    (root / "code").mkdir()
    shutil.copy(CORPORA / "skypile/2023-04.jsonl", root / "web/2023-04.jsonl")
    shutil.copy(CORPORA / "slimpajama/train/chunk1/example_train_0000.jsonl.zst", root / "web/sub/slim.jsonl.zst")
    table = pq.read_table(CORPORA / "starcoderdata/python/train-00000-of-00004.parquet").slice(0, 40)
    pq.write_table(table, root / "code/part-0.parquet", row_group_size=10)
    (root / "web/notes.txt").write_text("not an input\n")
    (root / "code/part-0.parquet.bak").write_bytes(b"nor this")
    return root


def upload(client, bucket: str, root: Path, prefix: str) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(root).as_posix()}", Body=p.read_bytes())


def spec_over(dir: Path, where: str) -> Path:
    """The same spec over `where` (a local dir or an s3:// prefix): web (near dedup) + code."""
    dir.mkdir(parents=True, exist_ok=True)
    spec = dir / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "bucket-inputs"
        seed = 11
        seq_len = 64
        tokenizer = "{TOKENIZER_ZST}"
        shard_tokens = "8K"

        [corpora.web]
        paths = ["{where}/web/**/*.jsonl*"]
        dedup = "near"
        holdout_docs = 3

        [corpora.code]
        paths = ["{where}/code/*.parquet"]
        text = "content"
        dedup = "none"
        """) + STAGES)
    return spec


@pytest.fixture
def inputs(s3, tmp_path):
    """(the local slice, its copy's URL in the moto bucket, the bucket, the boto3 client)."""
    bucket, client = s3
    root = make_inputs(tmp_path / "local")
    upload(client, bucket, root, "corpora")
    return root, f"s3://{bucket}/corpora", bucket, client


@pytest.fixture
def local_mix(inputs, tmp_path):
    root = inputs[0]
    out = tmp_path / "mix-local"
    build_mix(spec_over(tmp_path / "spec-local", str(root)), out, workers=2, progress=False)
    return out


def test_a_bucket_corpus_builds_the_same_mix_as_the_same_files_on_disk(inputs, local_mix, tmp_path):
    root, url, _, _ = inputs
    out = tmp_path / "mix-bucket"
    summary = build_mix(spec_over(tmp_path / "spec-bucket", url), out, workers=2, progress=False)
    assert summary["files_processed"] == 3
    got, want = tree_bytes(out), tree_bytes(local_mix)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel  # every file, mix.json and the manifests included
    # The lock names inputs by their path under the corpus's base, with their size and sha256:
    # never where they were read from.
    manifest = json.loads((out / "corpora/web/manifest.json").read_text())
    files = [(f["path"], f["bytes"], f["sha256"]) for f in manifest["files"]]
    assert files == [(name, (root / "web" / name).stat().st_size,
                      hashlib.sha256((root / "web" / name).read_bytes()).hexdigest())
                     for name in ("2023-04.jsonl", "sub/slim.jsonl.zst")]
    code = json.loads((out / "corpora/code/manifest.json").read_text())["files"]
    assert [(f["path"], f["sha256"]) for f in code] == [
        ("part-0.parquet", hashlib.sha256((root / "code/part-0.parquet").read_bytes()).hexdigest())]
    text = "".join(p.read_text(errors="replace") for p in out.rglob("*.json"))
    assert "127.0.0.1" not in text and "s3://" not in text and str(root) not in text


@pytest.mark.slow
def test_a_server_that_checks_signatures_gives_the_same_mix(signed_s3, tmp_path):
    """Listing, streamed reads and parquet range reads, signed for a server that checks them."""
    bucket, client = signed_s3
    root = make_inputs(tmp_path / "local")
    upload(client, bucket, root, "corpora")
    here, there = tmp_path / "mix-local", tmp_path / "mix-bucket"
    build_mix(spec_over(tmp_path / "spec-local", str(root)), here, workers=2, progress=False)
    build_mix(spec_over(tmp_path / "spec-bucket", f"s3://{bucket}/corpora"), there, workers=2, progress=False)
    assert tree_bytes(there) == tree_bytes(here)


def plan_files(spec: Path, out: Path) -> list[list[tuple[str, int]]]:
    config = load_spec(spec).build_config(out, 1)
    plan = _core.BuildPlan(json.dumps(config))
    return [plan.files(i) for i in range(len(config["corpora"]))]


def glob_spec(dir: Path, patterns: list[str]) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    spec = dir / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "globs"
        seed = 1
        seq_len = 64
        tokenizer = "{TOKENIZER_ZST}"
        [corpora.web]
        paths = {json.dumps(patterns)}
        [[stages]]
        name = "basic"
        tokens = "1K"
        batch_tokens = "1K"
        weights = {{ web = 1.0 }}
        """))
    return spec


def test_glob_rules_and_order_are_the_local_ones(s3, tmp_path):
    bucket, client = s3
    root = tmp_path / "g"
    for rel in ("a.jsonl", "b.jsonl", "ab.jsonl", "Z.jsonl", "sub/c.jsonl", "sub/deep/d.jsonl", "x.txt",
                "sub/deep/e.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel * 3)
    upload(client, bucket, root, "g")
    cases = {
        ("*.jsonl",): ["Z.jsonl", "a.jsonl", "ab.jsonl", "b.jsonl"],  # `*` stays in its directory; byte order
        ("**/*.jsonl",): ["Z.jsonl", "a.jsonl", "ab.jsonl", "b.jsonl", "sub/c.jsonl", "sub/deep/d.jsonl"],
        ("?.jsonl",): ["Z.jsonl", "a.jsonl", "b.jsonl"],
        ("[ab].jsonl", "sub/**/*.jsonl"): ["a.jsonl", "b.jsonl", "c.jsonl", "deep/d.jsonl"],
        ("sub/deep/*", "sub/*.jsonl"): ["c.jsonl", "d.jsonl", "e.parquet"],  # each under its pattern's base
        ("sub/**/*.jsonl", "sub/deep/*.jsonl"): ["c.jsonl", "deep/d.jsonl"],  # found twice: its longest name
        ("sub/deep/d.jsonl",): ["d.jsonl"],  # a literal file: its name under its directory
    }
    for i, (patterns, names) in enumerate(cases.items()):
        local = plan_files(glob_spec(tmp_path / f"l{i}", [f"{root}/{p}" for p in patterns]), tmp_path / "o")
        remote = plan_files(glob_spec(tmp_path / f"r{i}", [f"s3://{bucket}/g/{p}" for p in patterns]),
                            tmp_path / "o")
        assert [n for n, _ in local[0]] == names, patterns
        assert remote == local, patterns  # names, order and sizes

    with pytest.raises(SpecError) as e:
        plan_files(glob_spec(tmp_path / "none", [f"s3://{bucket}/g/**/*.zst"]), tmp_path / "o")
    assert one_line(e.value) == (f"spec: pattern 's3://{bucket}/g/**/*.zst' matches no file "
                                 f"(searched in s3://{bucket}/g)")
    # local and bucket patterns in one corpus: the same rules (names never say where a file is)
    mixed = plan_files(glob_spec(tmp_path / "mixed", [f"s3://{bucket}/g/?.jsonl", f"{root}/sub/*.jsonl"]),
                       tmp_path / "o")
    assert [n for n, _ in mixed[0]] == ["Z.jsonl", "a.jsonl", "b.jsonl", "c.jsonl"]
    client.put_object(Bucket=bucket, Key="g/sub/a.jsonl", Body=b"another a")
    with pytest.raises(SpecError) as e:  # two objects, one name
        plan_files(glob_spec(tmp_path / "twice", [f"s3://{bucket}/g/*.jsonl", f"s3://{bucket}/g/sub/*.jsonl"]),
                   tmp_path / "o")
    assert f"s3://{bucket}/g/a.jsonl and s3://{bucket}/g/sub/a.jsonl are both named 'a.jsonl'" in one_line(e.value)


def test_throttling_resets_and_bodies_cut_short_still_give_the_same_bytes(inputs, local_mix, tmp_path, server,
                                                                         monkeypatch):
    _, url, _, _ = inputs
    first_gets: set[str] = set()
    cut: list[str] = []

    def cut_first_read_of_each_input(path: str) -> bool:
        key = path.split("?")[0]
        if not key.endswith((".jsonl", ".zst", ".parquet")) or key in first_gets:
            return False
        first_gets.add(key)
        cut.append(key)
        return True

    proxy = FlakyProxy(server, slowdowns=2, resets=2, truncates=3, cut=cut_first_read_of_each_input)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("TINYLLAMA_S3_RETRIES", "5")
    try:
        out = tmp_path / "mix-flaky"
        build_mix(spec_over(tmp_path / "spec-flaky", url), out, workers=2, progress=False)
    finally:
        proxy.close()
    assert proxy.truncates == 0 and sorted(k.rsplit("/", 1)[1] for k in cut) == [
        "2023-04.jsonl", "part-0.parquet", "slim.jsonl.zst"]  # a stream of each format, a parquet range read
    assert proxy.seen[:4] == ["GET"] * 4  # the listing was throttled and reset, then retried
    assert tree_bytes(out) == tree_bytes(local_mix)


def test_an_object_replaced_after_listing_is_named_and_nothing_is_committed(inputs, tmp_path, server, monkeypatch):
    _, url, bucket, client = inputs
    key = "corpora/web/sub/slim.jsonl.zst"
    replaced = []

    def replace_before_first_read(path: str) -> None:
        if path.split("?")[0].endswith(key) and not replaced:
            replaced.append(path)
            client.put_object(Bucket=bucket, Key=key, Body=b'{"text": "other bytes"}\n')

    proxy = FlakyProxy(server, slowdowns=0, resets=0, before_get=replace_before_first_read)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    out = tmp_path / "mix-replaced"
    try:
        with pytest.raises(_core.StorageError) as e:
            build_mix(spec_over(tmp_path / "spec-replaced", url), out, workers=1, progress=False)
    finally:
        proxy.close()
    assert replaced
    assert one_line(e.value).startswith(f"s3://{bucket}/{key}: changed since it was listed")
    assert not (out / "mix.json").exists()


def test_a_missing_bucket_and_a_dead_endpoint_are_one_line_naming_the_url(s3, tmp_path, monkeypatch):
    with pytest.raises(_core.StorageError) as e:
        plan_files(spec_over(tmp_path / "nobucket", "s3://no-such-bucket-here/corpora"), tmp_path / "o")
    assert one_line(e.value).startswith("s3://no-such-bucket-here/corpora/web: ")

    # Through the CLI, as a user meets it: a wrong endpoint, no retries.
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "TINYLLAMA_S3_RETRIES": "0"}
    spec = spec_over(tmp_path / "dead", "s3://some-bucket/corpora")
    done = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out",
                           str(tmp_path / "mix-dead"), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "s3://some-bucket/corpora/web" in lines[0], lines[0]
    assert not (tmp_path / "mix-dead" / "mix.json").exists()


def test_the_distributed_stages_read_bucket_inputs_to_the_same_bytes(inputs, local_mix, tmp_path):
    """What `--ray` tasks run (each its own `BuildPlan`, listing the bucket itself), by hand:
    two plans stand for two processes, files and band partitions alternate between them."""
    root, url, _, _ = inputs
    out = tmp_path / "mix-stages"
    config = json.dumps(load_spec(spec_over(tmp_path / "spec-stages", url)).build_config(out, 1))
    a, b = _core.BuildPlan(config), _core.BuildPlan(config)
    assert a.files(0) == [(n, (root / "web" / n).stat().st_size) for n in ("2023-04.jsonl", "sub/slim.jsonl.zst")]
    assert not a.prepare()
    for c, (_name, n_files, deduped) in enumerate(a.corpora()):
        if deduped:
            for i in range(n_files):
                (a if i % 2 else b).fingerprint(c, i)
            a.dedup_exact(c)
            for k, r in enumerate(a.band_ranges(c, 2)):
                (b if k % 2 else a).dedup_bands(c, *r)
            b.dedup(c, 2)
        for i in range(n_files):
            (b if i % 2 else a).tokenize(c, i)
        for k, shard in enumerate(b.pack_layout(c)):
            (a if k % 2 else b).pack_shard(c, shard)
    a.finish()
    assert tree_bytes(out) == tree_bytes(local_mix)
