"""Training from a mix in a bucket (issue 27, item 3, and its faults): the lazily filled
per-shard cache (rust/mix/shard_cache.rs), against the suite's real S3 server on 127.0.0.1.

Opening a bucket mix fetches its small files only; each shard is fetched the first time a read
needs it, verified before it is published, shared by the processes of a node (one download per
shard), and the least recently used shards are evicted past the byte budget. Batches equal the
local mix's whatever the cache did; a corrupt or truncated download and a full cache disk are
one line naming the URL, and nothing unverified is ever published."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SIGNED_IN_SLOW
from s3_server import FlakyProxy, one_line


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    from test_family import family_spec

    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("fam")
    build_mix(family_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


def upload(b, mix: Path, key: str) -> str:
    """Put a local mix's files (not its build log or lock) under `key`; the mix's URL."""
    for p in sorted(mix.rglob("*")):
        if p.is_file() and p.name not in ("build.log", ".lock"):
            b.upload(str(p), f"{key}/{p.relative_to(mix).as_posix()}")
    return b.url(key)


def cached(cache: Path) -> dict[str, int]:
    """The shards in the cache: 'corpus/name' -> bytes (every mix dir of `cache`)."""
    return {f"{p.parent.name}/{p.name}": p.stat().st_size for p in cache.glob("*/corpora/*/*.bin")}


def needed(mix, steps, rank: int = 0, world: int = 1) -> set[str]:
    """The training shards the windows of `steps` touch, from the manifests' token counts."""
    out = set()
    for step in steps:
        for corpus, _, window in mix.samples(step, rank, world):
            entries = mix.manifest(corpus)["shards"]
            ends = np.cumsum([e["tokens"] for e in entries])
            first, last = window * mix.seq_len, window * mix.seq_len + mix.seq_len  # inclusive
            for i in range(int(np.searchsorted(ends, first, "right")), int(np.searchsorted(ends, last, "right")) + 1):
                out.add(f"{corpus}/{entries[i]['name']}")
    return out


@SIGNED_IN_SLOW
def test_a_bucket_mix_gives_the_local_batches_fetching_only_the_shards_they_need(any_s3, fam, tmp_path):
    import tinyllama
    from tinyllama import _core

    name, _ = any_s3
    url = upload(_core.Bucket(f"s3://{name}"), fam, "mixes/fam")
    cache = tmp_path / "cache"
    trunk = tinyllama.Mix(url, cache_dir=cache)
    assert trunk.path.parent == cache and (trunk.path / "tokenizer.json").is_file()
    assert cached(cache) == {}  # opening fetches no shard
    local = tinyllama.Mix(fam)
    steps = range(trunk.num_steps())
    for step in steps:
        assert np.array_equal(trunk.batch(step)[0], local.batch(step)[0]), step
    # the trunk gives skypile and starcoder weight zero: none of their shards, no holdout
    assert set(cached(cache)) == needed(local, steps) and all(k.startswith("slimpajama/") for k in cached(cache))
    assert trunk._cache.downloads == len(cached(cache))

    code, local_code = tinyllama.Mix(url, "code", cache_dir=cache), tinyllama.Mix(fam, "code")
    late = range(local.num_steps(), local_code.num_steps(), 3)
    for step in late:
        assert np.array_equal(code.batch(step)[0], local_code.batch(step)[0]), step
    assert set(cached(cache)) == needed(local, steps) | needed(local_code, late)
    assert not any(k.startswith("skypile/") for k in cached(cache))

    # warm: a new reader (a new process would be the same) downloads nothing
    warm = tinyllama.Mix(url, "code", cache_dir=cache)
    for step in late:
        assert np.array_equal(warm.batch(step)[0], local_code.batch(step)[0]), step
    assert warm._cache.downloads == 0

    # holdout shards only when validation asks for them
    assert not any("holdout" in k for k in cached(cache))
    held = list(warm.documents("starcoder", holdout=True))
    assert [d.tolist() for d in held] == [d.tolist() for d in local.documents("starcoder", holdout=True)]
    assert {k for k in cached(cache) if "holdout" in k} == {"starcoder/holdout-00000.bin"}


def test_past_the_budget_the_least_recently_used_shards_are_evicted(s3, fam, tmp_path):
    import tinyllama
    from tinyllama import _core

    name, _ = s3
    url = upload(_core.Bucket(f"s3://{name}"), fam, "m")
    local = tinyllama.Mix(fam, "code")
    budget = 2 * max(p.stat().st_size for p in fam.glob("corpora/*/*.bin"))  # two shards of the ~9 read
    cache = tmp_path / "cache"
    remote = tinyllama.Mix(url, "code", cache_dir=cache, cache_bytes=budget)
    steps = range(0, local.num_steps(), 2)
    assert len(needed(local, steps)) > 2
    for step in steps:
        assert np.array_equal(remote.batch(step)[0], local.batch(step)[0]), step
        assert sum(cached(cache).values()) <= budget, step  # after every fetch
    assert remote._cache.downloads > len(cached(cache))  # some were evicted
    # the loader (worker threads fetch ahead of the step) gives the same batches under the budget
    loader = tinyllama.Mix(url, "code", cache_dir=cache, cache_bytes=budget).loader(threads=2, pin=False)
    for b in loader:
        assert np.array_equal(b.tokens.numpy().astype(np.int64), local.batch(b.step)[0]), b.step
    assert sum(cached(cache).values()) <= budget
    assert not list(cache.rglob("*.part"))

    # a shard larger than the whole budget: one line naming it and the budget
    with pytest.raises(tinyllama.errors.StorageError) as e:
        tinyllama.Mix(url, "code", cache_dir=tmp_path / "tiny", cache_bytes=1000).batch(0)
    msg = one_line(e.value)
    assert msg.startswith(f"{url}/corpora/") and "more than mix_cache_bytes (1000)" in msg


def test_the_cache_evicts_only_shards_it_made(s3, fam, tmp_path):
    from test_family import HEADER, family_spec

    import tinyllama
    from tinyllama import _core
    from tinyllama.data.build import build_mix

    name, _ = s3
    other = tmp_path / "other"
    build_mix(family_spec(other, HEADER.replace("seed = 11", "seed = 12")), other / "mix", 2, progress=False)
    b = _core.Bucket(f"s3://{name}")
    a_url, b_url = upload(b, fam, "a"), upload(b, other / "mix", "b")
    cache = tmp_path / "cache"
    (cache / "mine/corpora/x").mkdir(parents=True)
    (cache / "mine/corpora/x/keep.bin").write_bytes(b"not the cache's" * 1000)  # a dir the cache did not make
    first = tinyllama.Mix(a_url, cache_dir=cache)
    first.batch(0)
    a_shards = list(first.path.glob("corpora/*/*.bin"))
    budget = max(p.stat().st_size for p in fam.glob("corpora/*/*.bin")) + 1000
    second = tinyllama.Mix(b_url, cache_dir=cache, cache_bytes=budget)
    second.batch(0)
    assert a_shards and not any(p.exists() for p in a_shards)  # the other mix's older shards made room
    assert second.path != first.path and (first.path / "mix.json").is_file()  # its metadata stays
    assert (cache / "mine/corpora/x/keep.bin").read_bytes() == b"not the cache's" * 1000


READER = textwrap.dedent("""
    import hashlib, json, sys
    import tinyllama
    url, cache, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    mix = tinyllama.Mix(url, "code", cache_dir=cache)
    h = hashlib.sha256()
    for step in steps:
        h.update(mix.batch(step)[0].tobytes())
    print(json.dumps({"digest": h.hexdigest(), "downloads": mix._cache.downloads}))
""")


def test_two_processes_share_the_cache_with_one_download_per_shard(s3, fam, tmp_path):
    import tinyllama
    from tinyllama import _core

    name, _ = s3
    url = upload(_core.Bucket(f"s3://{name}"), fam, "m")
    local = tinyllama.Mix(fam, "code")
    steps = list(range(0, local.num_steps(), 2))
    want = hashlib.sha256(b"".join(local.batch(s)[0].tobytes() for s in steps)).hexdigest()
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", READER, url, str(cache), json.dumps(steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [json.loads(o[0]) for o in outs]
    assert [g["digest"] for g in got] == [want, want]
    assert sum(g["downloads"] for g in got) == len(cached(cache)) == len(needed(local, steps))


def test_a_corrupt_or_truncated_download_is_never_used_nor_cached(s3, fam, tmp_path, monkeypatch):
    import tinyllama
    from tinyllama import _core

    name, client = s3
    b = _core.Bucket(f"s3://{name}")
    url = upload(b, fam, "m")
    local = tinyllama.Mix(fam)
    first = sorted(needed(local, [0]))[0]  # a shard step 0 reads
    key = f"m/corpora/{first}"
    data = bytearray(b.get(key))
    data[100] ^= 1  # one token byte flipped, the size unchanged
    b.put(key, bytes(data))
    cache = tmp_path / "cache"
    remote = tinyllama.Mix(url, cache_dir=cache)
    for _ in range(2):  # every read that needs it fails the same way
        with pytest.raises(tinyllama.errors.TinyllamaError) as e:
            remote.batch(0)
        msg = one_line(e.value)
        assert msg.startswith(f"{url}/corpora/{first}: ") and "checksum mismatch" in msg, msg
    assert first not in cached(cache) and not list(cache.rglob("*.part"))
    with pytest.raises(tinyllama.errors.TinyllamaError) as e:  # the loader's worker threads too
        next(iter(remote.loader(pin=False)))
    assert one_line(e.value).startswith(f"{url}/corpora/{first}: ")
    b.put(key, bytes(fam.joinpath("corpora", first).read_bytes()))  # repaired: read as usual
    assert np.array_equal(remote.batch(0)[0], local.batch(0)[0])

    # a GET whose body stops halfway is fetched again; one that keeps stopping is one line; what
    # is published is whole and verified either way
    proxy = FlakyProxy(client.meta.endpoint_url, slowdowns=0, resets=0)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        cut = tinyllama.Mix(url, cache_dir=tmp_path / "cut")
        proxy.truncates, proxy.seen = 1, []
        assert np.array_equal(cut.batch(0)[0], local.batch(0)[0]) and proxy.truncates == 0
        assert len(proxy.seen) == len(needed(local, [0])) + 1  # one GET again
        proxy.truncates = 100  # retries: 3 (the s3 fixture's TINYLLAMA_S3_RETRIES)
        with pytest.raises(tinyllama.errors.StorageError) as e:
            cut.batch(3)
        assert one_line(e.value).startswith(f"{url}/corpora/") and proxy.truncates == 96
        for path in (tmp_path / "cut").glob("*/corpora/*/*.bin"):
            corpus = path.parent.name
            entry = next(e for e in local.manifest(corpus)["shards"] if e["name"] == path.name)
            _core.verify_shard(str(path), local.lock["vocab_size"], entry["checksum"])
        assert set(cached(tmp_path / "cut")) == needed(local, [0])
        assert not list((tmp_path / "cut").rglob("*.part"))
    finally:
        proxy.close()


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import tinyllama
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # smaller than any training shard
    try:
        tinyllama.Mix(sys.argv[1], cache_dir=sys.argv[2]).batch(0)
    except tinyllama.errors.TinyllamaError as e:
        print(e)
        sys.exit(1)
""")


def test_a_full_cache_disk_is_one_line_naming_the_cache_dir_and_the_url(s3, fam, tmp_path):
    import tinyllama
    from tinyllama import _core

    name, _ = s3
    url = upload(_core.Bucket(f"s3://{name}"), fam, "m")
    cache = tmp_path / "cache"
    path = tinyllama.Mix(url, cache_dir=cache).path  # the small files are there; the shards will not fit
    r = subprocess.run([sys.executable, "-c", FULL_DISK, url, str(cache)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 1 and r.stderr == "", r.stderr
    msg = r.stdout.strip()
    assert "\n" not in msg and msg.startswith(f"{url}/corpora/"), msg
    assert "disk is full" in msg and str(path / "corpora") in msg
    assert cached(cache) == {} and not list(cache.rglob("*.part"))
