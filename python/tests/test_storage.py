"""Object storage (issue 27), against a real S3-compatible server the suite starts on 127.0.0.1
(moto's server mode): the storage layer (`tinyllama._core.Bucket`), retries through a
fault-injecting proxy, checkpoints in a bucket (run.upload_to, --resume from the bucket,
branch_from and export of a bucket checkpoint), and a mix built into a bucket and trained from it
(its shard cache: test_shard_cache.py)."""

from __future__ import annotations

import json

import pytest
from conftest import SIGNED_IN_SLOW
from s3_server import FlakyProxy, free_port, one_line

# ---- the storage layer ------------------------------------------------------------------------


def test_bucket_reads_and_writes_whole_verified_objects(any_s3, tmp_path):
    from tinyllama import _core

    name, client = any_s3
    b = _core.Bucket(f"s3://{name}/runs/a")
    assert b.prefix == "runs/a" and b.url("x/y") == f"s3://{name}/x/y"
    key, size, etag = b.put("runs/a/one", b"hello")
    assert (key, size) == ("runs/a/one", 5) and etag
    b.put("runs/a/sub/two", b"x" * 1000)
    b.put("runs/b/three", b"z")
    assert [k for k, _, _ in b.list("runs/a")] == ["runs/a/one", "runs/a/sub/two"]
    assert b.get("runs/a/one") == b"hello"
    assert client.get_object(Bucket=name, Key="runs/a/sub/two")["Body"].read() == b"x" * 1000  # what S3 holds
    assert b.head("runs/a/nope") is None
    # a conditional create: exactly one of two writers wins
    assert b.put_if_absent("runs/a/lease", b"first") is True
    assert b.put_if_absent("runs/a/lease", b"second") is False
    assert b.get("runs/a/lease") == b"first"
    # downloads go through .part and are checked against the listing
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    b.upload(str(src), "runs/a/blob")
    (k, size, etag), = [o for o in b.list("runs/a") if o[0] == "runs/a/blob"]
    assert b.download(k, str(tmp_path / "d/blob"), size, etag) == size
    assert (tmp_path / "d/blob").read_bytes() == src.read_bytes() and not (tmp_path / "d/blob.part").exists()
    b.put("runs/a/blob", b"replaced")  # replaced between listing and reading
    with pytest.raises(_core.StorageError) as e:
        b.download(k, str(tmp_path / "d/blob2"), size, etag)
    assert one_line(e.value).startswith(f"s3://{name}/runs/a/blob: ") and "replaced" in str(e.value)
    assert not (tmp_path / "d/blob2").exists()
    b.delete("runs/a/one")
    assert b.head("runs/a/one") is None


def test_failures_are_one_line_naming_the_url(s3, monkeypatch):
    from tinyllama import _core

    name, _ = s3
    b = _core.Bucket(f"s3://{name}")
    with pytest.raises(_core.StorageError) as e:
        b.get("no/such/key")
    assert one_line(e.value) == f"s3://{name}/no/such/key: no such object"
    with pytest.raises(_core.StorageError) as e:
        _core.Bucket("s3://no-such-bucket-here").get("k")
    assert one_line(e.value).startswith("s3://no-such-bucket-here/k: ")
    with pytest.raises(_core.StorageError) as e:
        _core.Bucket("gs://b/k")
    assert "gs:// is not supported" in one_line(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("TINYLLAMA_S3_RETRIES", "0")
    with pytest.raises(_core.StorageError) as e:
        _core.Bucket(f"s3://{name}").get("k")
    msg = one_line(e.value)
    assert msg.startswith(f"s3://{name}/k: ") and "127.0.0.1" not in msg.split(": ", 1)[0]


def test_a_server_that_checks_signatures_takes_every_request_and_a_refusal_is_one_line(signed_server, signed_s3,
                                                                                       tmp_path, monkeypatch):
    """The requests the other tests make of moto as it is, signed well enough for a server that checks
    each SigV4 signature and the user's IAM rights: a multipart upload (parts of 32 MiB), a download, the
    conditional writes the leases stand on. Refusals (a reader writing, a wrong secret, an unknown key)
    are one line naming the URL and what the server said."""
    import os

    from tinyllama import _core

    name, _ = signed_s3
    _, keys = signed_server
    b = _core.Bucket(f"s3://{name}")
    big = tmp_path / "big"
    big.write_bytes(os.urandom((32 << 20) + 12345))  # two parts
    b.upload(str(big), "data/big")
    (key, size, etag), = b.list("data")
    assert size == big.stat().st_size and b.download(key, str(tmp_path / "back"), size, etag) == size
    assert (tmp_path / "back").read_bytes() == big.read_bytes()
    assert b.put_if_absent("lease", b"1") and not b.put_if_absent("lease", b"2")
    _, _, tag = b.head("lease")
    assert b.put_if_match("lease", b"3", tag) and not b.put_if_match("lease", b"4", tag)
    # the reader may list and read, not write
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["reader"][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["reader"][1])
    reader = _core.Bucket(f"s3://{name}")
    assert reader.get("lease") == b"3" and [k for k, _, _ in reader.list("data")] == ["data/big"]
    with pytest.raises(_core.StorageError) as e:
        reader.put("data/new", b"x")
    assert one_line(e.value).startswith(f"s3://{name}/data/new: access denied: AccessDenied")
    with pytest.raises(_core.StorageError) as e:
        reader.head("data/new")  # moto asks for s3:HeadObject here, which no IAM policy grants
    assert one_line(e.value) == f"s3://{name}/data/new: access denied (HTTP 403 Forbidden)"
    assert b.head("data/new") is None  # nothing was written
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(_core.StorageError) as e:
        _core.Bucket(f"s3://{name}").get("lease")
    assert one_line(e.value).startswith(f"s3://{name}/lease: access denied: SignatureDoesNotMatch: ")
    assert "<" not in one_line(e.value)  # the server's words, not its XML
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    with pytest.raises(_core.StorageError) as e:
        _core.Bucket(f"s3://{name}").get("lease")
    assert one_line(e.value).startswith(f"s3://{name}/lease: access denied: InvalidAccessKeyId")


def test_throttling_and_dropped_connections_are_retried(s3, monkeypatch):
    from tinyllama import _core

    name, client = s3
    proxy = FlakyProxy(client.meta.endpoint_url, slowdowns=2, resets=1)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        b = _core.Bucket(f"s3://{name}")
        b.put("k", b"payload")  # 503, 503, reset, then through
        assert len(proxy.seen) >= 4 and proxy.seen[:3] == ["PUT", "PUT", "PUT"]
        assert client.get_object(Bucket=name, Key="k")["Body"].read() == b"payload"
        proxy.slowdowns, proxy.resets, proxy.seen = 1, 0, []
        assert b.get("k") == b"payload" and proxy.seen[:2] == ["GET", "GET"]
    finally:
        proxy.close()


# ---- checkpoints in a bucket -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    from test_family import family_spec

    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("fam")
    build_mix(family_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


@SIGNED_IN_SLOW
def test_checkpoints_go_to_the_bucket_and_a_run_resumes_from_it(any_s3, fam, tmp_path, capfd):
    from test_family import by_step, metrics, run, train_config

    from tinyllama import _core, load_model
    from tinyllama.hf import export

    name, client = any_s3
    url = f"s3://{name}/runs/trunk"
    whole = run(train_config(tmp_path / "whole", fam, tmp_path / "whole/run"))  # no bucket: the reference
    cfg = train_config(tmp_path / "a", fam, tmp_path / "a/run")
    run(cfg, f'run.upload_to="{url}"', "run.keep_last=1", "run.stop_after=4")
    run(cfg, f'run.upload_to="{url}"', "run.keep_last=1", "run.stop_after=6", resume=True)
    b = _core.Bucket(url)
    keys = {k: (size, etag) for k, size, etag in b.list("runs/trunk")}
    # keep_last = 1: only the newest committed step is left, whole, with its marker and checksums
    assert b.get("runs/trunk/checkpoints/latest") == b"step-6\n"
    steps = sorted({k.split("/")[3] for k in keys if k.count("/") >= 4})
    assert steps == ["step-6"]
    local = tmp_path / "a/run/checkpoints/step-6"
    for p in local.rglob("*"):
        if p.is_file():
            rel = p.relative_to(local).as_posix()
            assert b.get(f"runs/trunk/checkpoints/step-6/{rel}") == p.read_bytes(), rel
    assert "runs/trunk/checkpoints/step-6/COMMITTED" in keys
    # an empty local out: --resume takes the bucket's newest checkpoint that verifies
    fresh = train_config(tmp_path / "b", fam, tmp_path / "b/run")
    got = run(fresh, f'run.upload_to="{url}"', resume=True)
    assert [r["step"] for r in got] == [7, 8]
    assert by_step(got) == {s: v for s, v in by_step(whole).items() if s in (7, 8)}
    assert f"fetched step-6 from {url}/checkpoints" in capfd.readouterr().err
    # export and branch_from take the bucket's checkpoint
    hf = export(url, tmp_path / "hf", tokenizer=fam / "tokenizer.json")
    assert (hf / "model.safetensors").is_file()
    import torch

    x = torch.tensor([[1, 450, 4955, 310, 278]])
    with torch.no_grad():
        assert torch.equal(load_model(hf)(x), load_model(tmp_path / "whole/run/checkpoints/step-8")(x))
    branch = run(train_config(tmp_path / "c", fam, tmp_path / "c/run"), 'branch="chinese"',
                 f'branch_from="{url}"', "run.stop_after=10")
    local_branch = run(train_config(tmp_path / "d", fam, tmp_path / "d/run"), 'branch="chinese"',
                       f'branch_from="{tmp_path / "whole/run"}"', "run.stop_after=10")
    assert by_step(branch) == by_step(local_branch) and [r["step"] for r in branch] == [9, 10]
    assert json.loads((tmp_path / "c/run/train-config.json").read_text())["branched_from"]["step"] == 8
    assert metrics(tmp_path / "c/run")


def test_a_bucket_with_nothing_committed_is_one_line(s3, fam, tmp_path):
    from test_family import run, train_config

    from tinyllama import _core
    from tinyllama.errors import TinyllamaError

    name, _ = s3
    b = _core.Bucket(f"s3://{name}")
    b.put("runs/x/checkpoints/step-4/trainer.json", b"{}")  # an upload killed before its marker
    with pytest.raises(TinyllamaError) as e:
        run(train_config(tmp_path, fam, tmp_path / "run"), 'branch="chinese"', f'branch_from="s3://{name}/runs/x"')
    msg = one_line(e.value)
    assert f"s3://{name}/runs/x" in msg and "no committed checkpoint" in msg
    with pytest.raises(TinyllamaError) as e:
        run(train_config(tmp_path / "u", fam, tmp_path / "u/run"), 'run.upload_to="runs/x"')
    assert "key 'run.upload_to'" in one_line(e.value)


# ---- leases: one writer owns a prefix ----------------------------------------------------------


def test_a_lease_has_one_holder_is_renewed_and_a_dead_one_is_taken_over(any_s3, tmp_path, monkeypatch):
    import time

    from tinyllama import _core, storage
    from tinyllama.errors import StorageError

    name, _ = any_s3
    b = _core.Bucket(f"s3://{name}")
    monkeypatch.setenv("TINYLLAMA_LEASE_TTL_S", "1")  # renewed every 0.2 s, dead after 1 s unrenewed
    a = storage.Lease(b, "p", tmp_path / "a.token", "mix build").acquire()
    first = json.loads(b.get("p/.lease"))
    assert first["token"] == (tmp_path / "a.token").read_text() and first["what"] == "mix build"
    with pytest.raises(StorageError) as e:
        storage.Lease(b, "p", tmp_path / "b.token", "mix build").acquire()
    msg = one_line(e.value)
    assert msg.startswith(f"s3://{name}/p: held by another mix build") and "nothing was written" in msg
    assert not (tmp_path / "b.token").exists()
    time.sleep(1.5)  # longer than the ttl: only the renewals keep it live
    assert json.loads(b.get("p/.lease"))["renewed"] > first["renewed"]
    with pytest.raises(StorageError):
        storage.Lease(b, "p", tmp_path / "b.token", "mix build").acquire()
    again = storage.Lease(b, "p", tmp_path / "a.token", "mix build").acquire()  # the same writer takes it back
    for held in (a, again):
        held._stop.set()  # both stop renewing, as a killed writer would
    time.sleep(1.2)
    # dead: two writers race to take it over; a conditional replace lets exactly one win
    racers = [storage.Lease(b, "p", tmp_path / f"r{i}.token", "training run") for i in range(2)]
    won = []
    for r in racers:
        try:
            won.append(r.acquire())
        except StorageError as err:
            assert "held by another training run" in one_line(err)
    assert len(won) == 1 and json.loads(b.get("p/.lease"))["token"] == won[0].token
    a.release()  # the dead holder's late release deletes nothing of the next holder's
    assert json.loads(b.get("p/.lease"))["token"] == won[0].token
    assert not a.renew() and "taken by another writer" in a.lost
    won[0].release()
    assert b.head("p/.lease") is None


def test_a_run_owns_its_upload_prefix(s3, fam, tmp_path, monkeypatch):
    import time

    from test_family import run, train_config

    from tinyllama import _core
    from tinyllama.errors import TinyllamaError

    name, _ = s3
    url = f"s3://{name}/runs/own"
    b = _core.Bucket(url)
    live = {"token": "another-run", "holder": "node7:42", "what": "training run", "renewed": time.time()}
    b.put("runs/own/.lease", json.dumps(live).encode())
    cfg = train_config(tmp_path / "a", fam, tmp_path / "a/run")
    with pytest.raises(TinyllamaError) as e:
        run(cfg, f'run.upload_to="{url}"', "run.stop_after=2")
    msg = one_line(e.value)
    assert "held by another training run (node7:42" in msg and url in msg
    assert [k for k, _, _ in b.list("runs/own")] == ["runs/own/.lease"]  # nothing written
    # a lease its holder stopped renewing (a preempted run) is taken over; the run ends by releasing it
    monkeypatch.setenv("TINYLLAMA_LEASE_TTL_S", "5")
    b.put("runs/own/.lease", json.dumps({**live, "renewed": time.time() - 60}).encode())
    run(cfg, f'run.upload_to="{url}"', "run.stop_after=2")
    assert b.head("runs/own/.lease") is None and b.get("runs/own/checkpoints/latest") == b"step-2\n"
    # a new run on a prefix that holds checkpoints is refused, as a local out dir holding them is
    with pytest.raises(TinyllamaError) as e:
        run(train_config(tmp_path / "b", fam, tmp_path / "b/run"), f'run.upload_to="{url}"', "run.stop_after=2")
    assert "already holds checkpoints (latest: step-2): pass --resume" in one_line(e.value)
    assert not (tmp_path / "b/run/checkpoints").exists() or not any((tmp_path / "b/run/checkpoints").iterdir())
    # --resume of the same run (its out dir holds its token) goes on, even while its lease is live
    run(cfg, f'run.upload_to="{url}"', "run.stop_after=3", resume=True)
    assert b.get("runs/own/checkpoints/latest") == b"step-3\n"


# ---- a mix in a bucket ------------------------------------------------------------------------


def _objects(b, key: str) -> dict[str, bytes]:
    return {k[len(key) + 1:]: b.get(k) for k, _, _ in b.list(key)}


@SIGNED_IN_SLOW
def test_a_mix_is_built_into_a_bucket_and_read_from_a_cache(any_s3, fam, tmp_path, monkeypatch):
    import subprocess
    import sys

    from conftest import tree_bytes
    from test_family import family_spec

    import tinyllama
    from tinyllama import _core

    name, _ = any_s3
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    url = f"s3://{name}/mixes/fam"
    spec = family_spec(tmp_path / "spec")

    def build(*extra):
        return subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out",
                               url, "--quiet", *extra], capture_output=True, text=True, check=False)

    r = build()
    assert r.returncode == 0, r.stderr
    b = _core.Bucket(url)
    got = _objects(b, "mixes/fam")
    assert got == tree_bytes(fam)  # the bytes of a local build, nothing more (no lease, no log)
    assert build().returncode == 0  # up to date: nothing to upload
    # a second writer on the prefix is refused before it writes anything
    import time

    held = json.dumps({"token": "someone-else", "holder": "node3:9", "what": "mix build",
                       "renewed": time.time()}).encode()
    b.put("mixes/fam/.lease", held)
    b.delete("mixes/fam/mix.json")
    r = build()
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "held by another mix build (node3:9" in r.stderr
    assert b.head("mixes/fam/mix.json") is None and b.get("mixes/fam/.lease") == held
    b.delete("mixes/fam/.lease")
    assert build().returncode == 0 and b.head("mixes/fam/mix.json") is not None

    # read back through a local cache: the same batches as the local mix, trunk and branch
    cache = tmp_path / "mixcache"
    remote = tinyllama.Mix(url, cache_dir=cache)
    assert remote.url == url and remote.path.parent == cache
    for branch in (None, "code"):
        here, there = tinyllama.Mix(fam, branch), tinyllama.Mix(url, branch, cache_dir=cache)
        for step in (0, 7, 8, 12):
            if step < here.num_steps():
                assert (here.batch(step)[0] == there.batch(step)[0]).all(), (branch, step)
    # shards are fetched on first use (tests: test_shard_cache.py); one larger than the budget is one line
    with pytest.raises(tinyllama.errors.StorageError) as e:
        tinyllama.Mix(url, cache_dir=tmp_path / "small", cache_bytes=1024).batch(0)
    assert "more than mix_cache_bytes" in one_line(e.value) and one_line(e.value).startswith(f"{url}/corpora/")
    with pytest.raises(tinyllama.errors.StorageError) as e:
        tinyllama.Mix(f"s3://{name}/mixes/none", cache_dir=cache)
    assert one_line(e.value).startswith(f"s3://{name}/mixes/none: not a built mix")


def test_training_from_a_bucket_mix_equals_training_from_disk(s3, fam, tmp_path, monkeypatch):
    from test_family import by_step, run, train_config

    from tinyllama import _core

    name, _ = s3
    b = _core.Bucket(f"s3://{name}")
    for p in fam.rglob("*"):
        if p.is_file() and p.name not in ("build.log", ".lock"):
            b.upload(str(p), f"m/{p.relative_to(fam).as_posix()}")
    local = run(train_config(tmp_path / "l", fam, tmp_path / "l/run"), "run.stop_after=3")
    cfg = train_config(tmp_path / "r", fam, tmp_path / "r/run")
    # a budget of 3 of the mix's ~20 shards: the loader's threads fetch, evict and fetch again
    remote = run(cfg, f'mix="s3://{name}/m"', f'mix_cache="{tmp_path / "cache"}"', 'mix_cache_bytes="300K"',
                 "run.stop_after=3")
    assert by_step(remote) == by_step(local) and len(remote) == 3
    assert 0 < sum(p.stat().st_size for p in (tmp_path / "cache").glob("*/corpora/*/*.bin")) <= 300 << 10
    # its export finds the tokenizer in the bucket's mix
    from tinyllama.hf import export

    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache-root"))
    hf = export(tmp_path / "r/run", tmp_path / "hf")
    assert (hf / "tokenizer.json").read_bytes() == (fam / "tokenizer.json").read_bytes()
