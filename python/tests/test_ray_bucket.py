"""`mix build --ray --out s3://...` with no shared filesystem (issue 27, item 2), against the suite's
real S3-compatible server on 127.0.0.1 (moto's server mode: the `s3` fixture): inputs and output in
the bucket, every task in its own local temp dir syncing only what its stage reads, the mix in the
bucket byte-identical to a local build of the same spec, the staging gone once mix.json is up, and a
second build on the prefix refused by the lease."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_bytes
from test_bucket_inputs import make_inputs, spec_over, upload

from tinyllama import _core, storage
from tinyllama.data import ray_bucket, ray_build
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec
from tinyllama.errors import StorageError

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'tinyllama-forge[ray]')")


@pytest.fixture
def inputs(s3, tmp_path):
    """(the local slice's spec, the same spec over its copy in the bucket, the bucket, the client)."""
    bucket, client = s3
    root = make_inputs(tmp_path / "local")
    upload(client, bucket, root, "corpora")
    local = spec_over(tmp_path / "spec-local", str(root))
    assert 'dedup = "near"' in local.read_text()  # so every stage of the graph runs
    return local, spec_over(tmp_path / "spec-bucket", f"s3://{bucket}/corpora"), bucket, client


@pytest.fixture
def expected(inputs, tmp_path):
    build_mix(inputs[0], tmp_path / "mix-local", workers=2, progress=False)
    return tree_bytes(tmp_path / "mix-local")


def bucket_mix(url: str, into: Path) -> dict[str, bytes]:
    """The mix at `url`, every object of it downloaded (the lease and staging must be gone)."""
    b, key = storage.bucket(url)
    storage.download_dir(b, key, into)
    return tree_bytes(into)


def objects(client, bucket: str) -> dict[str, str]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


def task_dirs(record: Path) -> list[str]:
    return [line.rsplit(":", 1)[1] for line in record.read_text().splitlines()]


def test_tasks_by_hand_sync_only_their_stage_and_publish_the_local_bytes(inputs, expected, tmp_path, monkeypatch):
    """What the Ray tasks run (the task functions themselves, in this process, in graph order), then
    the driver's finish: each task in a temp dir of its own, removed after it; a pack task pulls only
    the parts its shard covers; a rerun task writes nothing; the result is the local build's bytes."""
    _, spec, bucket, client = inputs
    url = f"s3://{bucket}/mixes/m"
    record = tmp_path / "task-dirs"
    monkeypatch.setenv("TINYLLAMA_RAY_TASK_DIRS", str(record))
    out = tmp_path / "driver" / "mix"
    config = load_spec(spec).build_config(out, 1)
    # the spec's tokenizer, as a file of the driver's only (the tasks must take it from the bucket)
    tokenizer = tmp_path / Path(config["tokenizer"]).name
    tokenizer.write_bytes(Path(config["tokenizer"]).read_bytes())
    config["tokenizer"] = str(tokenizer)
    driver = _core.BuildPlan(json.dumps(config))
    cfg = json.dumps({**config, ray_bucket.BUCKET_KEY: url}, sort_keys=True)
    assert not driver.prepare()
    b, key = storage.bucket(url)
    ray_bucket.upload_identity(b, key, out / ".staging", config["tokenizer"])
    hidden = tokenizer.rename(tmp_path / "hidden")  # not on the tasks' "nodes"
    packs = 0
    assert [deduped for _, _, deduped in driver.corpora()] == [True, False]
    for c, (name, n_files, deduped) in enumerate(driver.corpora()):
        if deduped:
            for i in range(n_files):
                ray_build._fingerprint_task(cfg, c, i, None)
            ray_build._exact_task(cfg, c, None)
            ranges = driver.band_ranges(c, 2)
            for k, r in enumerate(ranges):
                ray_build._bands_task(cfg, c, k, r, None, None)
            ray_build._dedup_task(cfg, c, len(ranges), None)
        for i in range(n_files):
            ray_build._tokenize_task(cfg, c, i, None, None)
        shards = ray_build._layout_task(cfg, c, None)
        for k, shard in enumerate(shards):
            ray_build._pack_task(cfg, c, k, shard, None)
            # What a pack task pulls: its shard's parts (part + sidecar) only, never the corpus.
            pulled = tmp_path / f"pull-{c}-{k}"
            ray_bucket.pull(b, key, pulled, name, "pack", shard_json=shard)
            covered = {p for p, _, _ in json.loads(shard)["slices"]}
            got = sorted(p.relative_to(pulled / name).as_posix() for p in (pulled / name).rglob("*") if p.is_file())
            assert got == sorted([f"packed/{json.loads(shard)['name']}"]
                                 + [f"parts/{p:06}.{ext}" for p in covered for ext in ("bin", "json")])
            packs += len(covered) < n_files
        # A retried task finds its outputs in the bucket: resumed, and nothing is written.
        before = objects(client, bucket)
        assert ray_build._tokenize_task(cfg, c, 0, None, None)["resumed"] is True
        assert ray_build._pack_task(cfg, c, 0, shards[0], None)["resumed"] is True
        assert objects(client, bucket) == before
    assert packs > 0, "some shard should cover fewer parts than its corpus has (or the point is not made)"
    staged = [k for k in objects(client, bucket) if "/.staging/" in k]
    assert any(k.endswith("/parts/000000.json") for k in staged) and any("/packed/" in k for k in staged)
    dirs = task_dirs(record)
    assert len(dirs) == len(set(dirs)) > 10, "every task works in a dir of its own"
    assert not any(Path(d).exists() for d in dirs), "every task removes its dir"
    hidden.rename(tokenizer)  # the driver's own (finish copies it into the mix)
    ray_bucket.finish_and_publish(b, key, driver, out, force=False)
    assert not [k for k in objects(client, bucket) if "/.staging/" in k], "staging removed after mix.json"
    assert bucket_mix(url, tmp_path / "fetched") == expected


@pytest.mark.slow  # CI's slow run is where Ray is installed
@needs_ray
def test_a_second_build_on_the_prefix_is_refused_by_the_lease(inputs, tmp_path, monkeypatch):
    """Another writer holds the prefix's lease: the build is refused in one line naming the prefix,
    before it writes anything (Ray is never started)."""
    _, spec, bucket, client = inputs
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    url = f"s3://{bucket}/mixes/m"
    b, key = storage.bucket(url)
    with storage.Lease(b, key, tmp_path / "other-writer-token", "mix build"):
        before = objects(client, bucket)
        with pytest.raises(StorageError, match=r"s3://.*/mixes/m: held by another mix build") as e:
            ray_build.build_mix_ray(spec, url, progress=False)
        assert "\n" not in str(e.value)
        assert objects(client, bucket) == before


@pytest.fixture(scope="module")
def cluster(server, tmp_path_factory):
    """A local Ray with 2 CPUs whose workers reach the moto server through the AWS_* environment
    (given explicitly: the server's port is only known here) and record their task dirs."""
    import ray

    record = tmp_path_factory.mktemp("ray-bucket") / "task-dirs"
    env = {"AWS_ENDPOINT_URL": server, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "TINYLLAMA_RAY_TASK_DIRS": str(record)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield record
    ray.shutdown()


@pytest.mark.slow
@needs_ray
def test_ray_build_into_a_bucket_gives_the_local_bytes(cluster, inputs, expected, tmp_path, monkeypatch):
    _, spec, bucket, client = inputs
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    url = f"s3://{bucket}/mixes/m"
    cluster.write_text("")  # this test's tasks only
    summary = ray_build.build_mix_ray(spec, url, band_partitions=2, progress=False)
    assert summary["out"] == url and summary["files_processed"] == 3
    files = {name: stage["files"] for name, stage in summary["stages"].items()}
    assert files == {"fingerprint": 2, "exact": 1, "bands": 2, "dedup": 1, "tokenize": 3, "layout": 2,
                     "pack": files["pack"]} and files["pack"] > 2
    assert not [k for k in objects(client, bucket) if "/.staging/" in k or k.endswith("/.lease")]
    assert bucket_mix(url, tmp_path / "fetched") == expected
    dirs = task_dirs(cluster)
    tasks = sum(s["files"] for s in summary["stages"].values())
    assert len(dirs) == len(set(dirs)) == tasks, "every task in a dir of its own, no shared path"
    assert not any(Path(d).exists() for d in dirs)
    # A second call finds the mix in the bucket and writes nothing.
    before = objects(client, bucket)
    assert ray_build.build_mix_ray(spec, url, progress=False)["up_to_date"]
    assert objects(client, bucket) == before


@pytest.mark.slow
@needs_ray
def test_failed_ray_build_into_a_bucket_resumes_from_its_staging(cluster, inputs, expected, tmp_path, monkeypatch):
    """A task error fails the build and keeps what was committed in the bucket's staging (the lease
    is released, no mix.json); the rerun resumes from there and publishes the local bytes."""
    _, spec, bucket, client = inputs
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    url = f"s3://{bucket}/mixes/m"
    chaos = {"stage": "tokenize", "corpus": 0, "file": 1, "action": "raise", "marker": str(tmp_path / "m")}
    with pytest.raises(RuntimeError, match="injected failure"):
        ray_build.build_mix_ray(spec, url, progress=False, _chaos=chaos)
    left = objects(client, bucket)
    assert not any(k.endswith(("/mix.json", "/.lease")) for k in left)
    committed = len([k for k in left if "/.staging/" in k and "/parts/" in k and k.endswith(".json")])
    assert any("/.staging/web/fingerprints/" in k for k in left)
    summary = ray_build.build_mix_ray(spec, url, progress=False)
    stages = summary["stages"]
    assert stages["fingerprint"]["resumed"] == stages["fingerprint"]["files"] == 2
    assert stages["dedup"]["resumed"] == 1
    assert summary["files_resumed"] == committed
    assert bucket_mix(url, tmp_path / "fetched") == expected


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize("stage,corpus,file", [("tokenize", 0, 1), ("pack", 0, 0)])
def test_killed_worker_is_retried_into_a_bucket(cluster, inputs, expected, tmp_path, monkeypatch, stage, corpus, file):
    _, spec, bucket, _ = inputs
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    url = f"s3://{bucket}/mixes/m"
    marker = tmp_path / "killed"
    chaos = {"stage": stage, "corpus": corpus, "file": file, "action": "kill", "marker": str(marker)}
    cluster.write_text("")  # this test's tasks only
    ray_build.build_mix_ray(spec, url, progress=False, _chaos=chaos)
    assert marker.exists(), "the fault was never injected"
    assert bucket_mix(url, tmp_path / "fetched") == expected
    # The killed task's dir too is gone: its retry swept it.
    dirs = task_dirs(cluster)
    assert not [d for d in dirs if Path(d).exists()]


@pytest.mark.slow
@needs_ray
def test_cli_ray_into_a_bucket(inputs, expected, tmp_path):
    """`tinyllama mix build --ray --out s3://...`: the local Ray the command starts inherits the
    AWS_* environment (set by the `s3` fixture) in its workers."""
    _, spec, bucket, _ = inputs
    url = f"s3://{bucket}/mixes/cli"
    env = {**os.environ, "TINYLLAMA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--ray",
                           "--out", url, "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "built:" in done.stdout
    assert bucket_mix(url, tmp_path / "fetched") == expected
