"""`mix build` on Ray: same bytes as the local build, retried worker deaths, resume, and a
clear message when Ray is missing. The cluster tests start a local Ray with 2 worker
processes and build the committed slice."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import DATA, tree_bytes, write_spec

from tinyllama import _core
from tinyllama.data.build import build_mix
from tinyllama.data.ray_build import build_mix_ray
from tinyllama.errors import ShardError, StorageError

DEDUP = f"""
[dedup]
ngram = 5

[corpora.slimpajama.filters]
language = {{ keep = ["en"] }}
gopher_repetition = {{}}

[decontaminate]
paths = ["{DATA / 'harness' / 'continuation.jsonl'}"]
"""


def _spec(tmp_path):
    # Near dedup on slimpajama (fingerprint + dedup + tokenize tasks), none on the others
    # (tokenize tasks only): both task graphs in one build.
    spec = write_spec(tmp_path, DEDUP)
    text = spec.read_text().replace("holdout_docs = 10\n", 'holdout_docs = 10\ndedup = "near"\n', 1)
    spec.write_text(text)
    return spec


def test_missing_ray_names_the_extra(tmp_path):
    """Run in a fresh interpreter where `import ray` fails, whether or not Ray is installed."""
    spec = _spec(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # makes `import ray` raise ImportError
        from tinyllama.data.ray_build import build_mix_ray, RayNotInstalledError
        from tinyllama.errors import TinyllamaError
        try:
            build_mix_ray({str(spec)!r}, {str(tmp_path / "out")!r})
        except RayNotInstalledError as e:
            assert isinstance(e, TinyllamaError)
            print(e)
        else:
            raise SystemExit("no error")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'tinyllama-forge[ray]'" in done.stdout
    assert not (tmp_path / "out" / "mix.json").exists()


def test_ray_driver_holds_the_out_dir_lock_and_refuses_a_foreign_dir(tmp_path, monkeypatch):
    """The driver takes OUT/.lock before it touches anything (Ray itself is never reached:
    a stand-in module without any attribute would fail the build if it were)."""
    import os
    import types

    from tinyllama.errors import LockedError, SpecError
    from tinyllama.lock import exclusive_dir_lock

    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    with exclusive_dir_lock(out, "test holder"):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            build_mix_ray(spec, out, progress=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not a mix dir"):
        build_mix_ray(spec, foreign, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def _config(spec, out) -> str:
    from tinyllama.data.spec import load_spec

    return json.dumps(load_spec(spec).build_config(out, 1), sort_keys=True)


def _stages_by_hand(spec, out, partitions):
    """The distributed build's stages run by hand, without Ray: two plans stand for two
    processes, files and band partitions are taken in reverse order and alternate between
    them. What a Ray worker runs is exactly these calls."""
    a, b = _core.BuildPlan(_config(spec, out)), _core.BuildPlan(_config(spec, out))
    assert not a.prepare()
    for c, (_name, n_files, deduped) in enumerate(a.corpora()):
        if deduped:
            for i in reversed(range(n_files)):
                (a if i % 2 else b).fingerprint(c, i)
            assert a.dedup_exact(c)["resumed"] is False
            assert b.dedup_exact(c)["resumed"] is True
            ranges = a.band_ranges(c, partitions)
            assert len(ranges) == min(partitions, 9) and ranges[0][0] == 0 and ranges[-1][1] == 9
            for k, r in reversed(list(enumerate(ranges))):
                (a if k % 2 else b).dedup_bands(c, *r)
            b.dedup(c, partitions)
        else:
            assert a.band_ranges(c, partitions) == []
        for i in range(n_files):
            (b if i % 2 else a).tokenize(c, i)
        shards = b.pack_layout(c)
        assert shards, "every corpus of the slice has shards"
        for k, shard in reversed(list(enumerate(shards))):
            assert (a if k % 2 else b).pack_shard(c, shard)["resumed"] is False
        assert a.pack_shard(c, shards[0])["resumed"] is True
    a.finish()


@pytest.mark.parametrize("partitions", [1, 4, 9])
def test_band_partitioned_stages_give_the_local_bytes(local, tmp_path, partitions):
    spec, expected = local
    _stages_by_hand(spec, tmp_path / "mix", partitions)
    assert tree_bytes(tmp_path / "mix") == expected


def test_missing_or_corrupt_band_partition_is_named(local, tmp_path):
    spec, _ = local
    out = tmp_path / "mix"
    plan = _core.BuildPlan(_config(spec, out))
    plan.prepare()
    _name, n_files, deduped = plan.corpora()[0]
    assert deduped
    for i in range(n_files):
        plan.fingerprint(0, i)
    with pytest.raises(StorageError, match="exact stage has not run"):
        plan.dedup_bands(0, 0, 3)
    plan.dedup_exact(0)
    plan.dedup_bands(0, 0, 3)
    with pytest.raises(StorageError, match=r"band partition 3\.\.6 has not run"):
        plan.dedup(0, 3)
    plan.dedup_bands(0, 3, 6)
    plan.dedup_bands(0, 6, 9)
    part = out / ".staging/slimpajama/dedup/bands-003-006.bin"
    data = bytearray(part.read_bytes())
    data[-9] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="bands-003-006.bin.*checksum mismatch"):
        plan.dedup(0, 3)
    assert plan.dedup_bands(0, 3, 6)["resumed"] is False  # a bad output is redone, not trusted
    assert plan.dedup(0, 3)["resumed"] is False
    assert plan.dedup(0, 3)["resumed"] is True


@pytest.mark.parametrize("args,message", [(["auto"], "only makes sense with --ray"),
                                          (["--band-partitions", "3"], "only makes sense with --ray"),
                                          (["--ray", "auto", "--address", "ray://h:1"], "two Ray addresses")])
def test_cli_ray_arguments_are_checked(tmp_path, args, message):
    """`mix build --spec F --ray [ADDRESS]`: an address or band partitions without --ray, or two
    different addresses, are refused before anything is built."""
    spec = _spec(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec),
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'tinyllama-forge[ray]')")


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The reference: the single-machine build with one worker thread."""
    root = tmp_path_factory.mktemp("local")
    spec = _spec(root)
    build_mix(spec, root / "mix", workers=1, progress=False)
    expected = tree_bytes(root / "mix")
    totals = json.loads((root / "mix/corpora/slimpajama/manifest.json").read_text())["totals"]
    assert totals["exact_duplicates"] + totals["near_duplicates"] > 0, \
        "the slice should have duplicates, or the dedup decision is not exercised"
    assert "corpora/slimpajama/dedup_report.parquet" in expected
    # filters (language, a quality heuristic, decontamination) dropped documents in the tasks too
    assert "corpora/slimpajama/filter_report.parquet" in expected and len(totals["filtered_by"]) == 3
    assert all(n > 0 for n in totals["filtered_by"].values()), totals["filtered_by"]
    return spec, expected


@pytest.mark.slow
@needs_ray
def test_same_bytes_as_local_build(cluster, local, tmp_path):
    spec, expected = local
    out = tmp_path / "mix"
    summary = build_mix_ray(spec, out, progress=False)
    assert tree_bytes(out) == expected
    assert summary["files_processed"] > 0 and summary["files_resumed"] == 0
    stages = summary["stages"]
    assert stages["fingerprint"]["files"] > 0 and stages["dedup"]["files"] == 1
    assert stages["exact"]["files"] == 1 and stages["bands"]["files"] == 9  # one task per band
    assert stages["bands"]["pairs"] > 0
    shards = sum(len(m["shards"]) + len(m["holdout_shards"])
                 for m in (json.loads(p.read_text()) for p in out.glob("corpora/*/manifest.json")))
    assert stages["layout"]["files"] == 3 and stages["pack"]["files"] == shards
    totals = [json.loads(m.read_text())["totals"] for m in out.glob("corpora/*/manifest.json")]
    all_tokens = sum(t["tokens"] + t["holdout_tokens"] for t in totals)
    assert stages["tokenize"]["tokens"] == all_tokens  # the progress counts every committed token
    # A second call finds the mix complete.
    assert build_mix_ray(spec, out, progress=False)["up_to_date"]
    assert tree_bytes(out) == expected


@pytest.mark.slow
@needs_ray
def test_band_partitions_and_in_flight_caps_do_not_change_the_bytes(cluster, local, tmp_path):
    spec, expected = local
    summary = build_mix_ray(spec, tmp_path / "mix", band_partitions=2, progress=False, in_flight_docs=3,
                            in_flight_mb=1)
    assert summary["stages"]["bands"]["files"] == 2
    assert tree_bytes(tmp_path / "mix") == expected


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize("stage,corpus,file", [("fingerprint", 0, 1), ("exact", 0, None), ("bands", 0, 4),
                                               ("dedup", 0, None), ("tokenize", 0, 1), ("tokenize", 2, 0),
                                               ("layout", 1, None), ("pack", 0, 0)])
def test_killed_worker_is_retried(cluster, local, tmp_path, stage, corpus, file):
    spec, expected = local
    marker = tmp_path / "killed"
    chaos = {"stage": stage, "corpus": corpus, "file": file, "action": "kill", "marker": str(marker)}
    out = tmp_path / "mix"
    build_mix_ray(spec, out, progress=False, _chaos=chaos)
    assert marker.exists(), "the fault was never injected"
    assert tree_bytes(out) == expected


def _committed_parts(out):
    return len(list((out / ".staging").glob("*/parts/*.json")))


@pytest.mark.slow
@needs_ray
def test_failed_build_resumes(cluster, local, tmp_path):
    """A task error fails the build (not retried: it would fail again) and keeps what was
    committed; the rerun (as after a killed driver) resumes and ends with the same bytes.
    The failing task waits on its corpus's dedup, so fingerprints and dedup are committed."""
    spec, expected = local
    out = tmp_path / "mix"
    chaos = {"stage": "tokenize", "corpus": 0, "file": 1, "action": "raise", "marker": str(tmp_path / "m")}
    with pytest.raises(RuntimeError, match="injected failure"):
        build_mix_ray(spec, out, progress=False, _chaos=chaos)
    assert not (out / "mix.json").exists()
    committed = _committed_parts(out)
    summary = build_mix_ray(spec, out, progress=False)
    stages = summary["stages"]
    assert stages["fingerprint"]["resumed"] == stages["fingerprint"]["files"] == 2
    assert stages["exact"]["resumed"] == stages["dedup"]["resumed"] == 1
    assert stages["bands"]["resumed"] == stages["bands"]["files"] == 9
    assert summary["files_resumed"] == committed
    assert tree_bytes(out) == expected


@pytest.mark.slow
@needs_ray
def test_local_build_resumes_ray_staging(cluster, local, tmp_path):
    """One implementation: a Ray build cut short is finished by the local build."""
    spec, expected = local
    out = tmp_path / "mix"
    chaos = {"stage": "tokenize", "corpus": 0, "file": 1, "action": "raise", "marker": str(tmp_path / "m")}
    with pytest.raises(RuntimeError):
        build_mix_ray(spec, out, progress=False, _chaos=chaos)
    committed = _committed_parts(out)
    summary = build_mix(spec, out, workers=2, progress=False)
    assert summary["files_resumed"] == committed
    assert tree_bytes(out) == expected
