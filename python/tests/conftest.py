"""Shared fixtures: the committed real-data slice and spec files written against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# ---- under CI the dev extras are required ---------------------------------------------------
# `.ci/run` sets TINYLLAMA_REQUIRE_DEV_EXTRAS=1: a test (or a whole file) that an
# `importorskip` of a dev extra would skip fails instead, so a broken install cannot turn the
# suite green by skipping it. Optional extras outside `dev` (ray, lm_eval) and missing hardware
# (CUDA) still skip.
REQUIRE_DEV_EXTRAS = "TINYLLAMA_REQUIRE_DEV_EXTRAS"
# import names of pyproject.toml's `dev` extra (train + test + the tools)
DEV_EXTRAS = frozenset({
    "torch", "safetensors", "matplotlib", "tensorboard",
    "pytest", "hypothesis", "tokenizers", "zstandard", "pyarrow", "transformers", "datatrove", "spacy",
    "moto", "boto3", "ruff", "mypy", "maturin",
})
_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def missing_dev_extra(report) -> str | None:
    """The dev extra whose failed import skipped `report`, when the extras are required."""
    if not report.skipped or os.environ.get(REQUIRE_DEV_EXTRAS) != "1":
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    m = _IMPORT_SKIP.search(reason)
    return m.group(1) if m and m.group(1).split(".")[0] in DEV_EXTRAS else None


def _fail_if_extra_missing(report) -> None:
    module = missing_dev_extra(report)
    if module is not None:
        report.outcome = "failed"
        report.longrepr = (f"{module} could not be imported: it is a dev extra, required when "
                           f"{REQUIRE_DEV_EXTRAS}=1 (CI); install it with `pip install -e .[dev]`")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_extra_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_extra_missing(outcome.get_result())


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests (pytest -m gpu; scripts/gpu-check.sh) skip where there is no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (the `gpu` marker)")
        for item in gpu:
            item.add_marker(skip)

CORPORA = DATA / "corpora"
TOKENIZER_ZST = DATA / "tokenizers/llama2/tokenizer.json.zst"


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory) -> Path:
    """The Llama 2 tokenizer.json, decompressed (the HF oracle cannot read .zst)."""
    import zstandard  # here, not at the top: the GPU check runs without the test extras

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_bytes(zstandard.ZstdDecompressor().decompress(TOKENIZER_ZST.read_bytes()))
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_json):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(tokenizer_json))


STAGES = """
[[stages]]
name = "basic"
tokens = "200K"
batch_tokens = "4K"
weights = { slimpajama = 1.0 }

[[stages]]
name = "continual"
tokens = "100K"
batch_tokens = "4K"
weights = { slimpajama = 0.5, skypile = 0.3, starcoder = 0.2 }
ramp_tokens = "40K"
"""


def write_spec(dir: Path, body: str = "", *, corpora: str | None = None, stages: str = STAGES,
               header: str | None = None) -> Path:
    """A spec over the slice with three corpora (jsonl.zst + filter, jsonl, parquet)."""
    if header is None:
        header = f"""
        name = "test"
        seed = 7
        seq_len = 128
        tokenizer = "{TOKENIZER_ZST}"
        shard_tokens = "50K"
        """
    if corpora is None:
        corpora = f"""
        [corpora.slimpajama]
        paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
        exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
        holdout_docs = 10

        [corpora.skypile]
        paths = ["{CORPORA}/skypile/*.jsonl"]

        [corpora.starcoder]
        paths = ["{CORPORA}/starcoderdata/**/*.parquet"]
        text = "content"
        """
    spec = dir / "spec.toml"
    spec.write_text(textwrap.dedent(header) + textwrap.dedent(corpora) + textwrap.dedent(body) + stages)
    return spec


def two_corpus_mix(dir: Path, holdout_docs: int = 0, workers: int = 1) -> Path:
    """SlimPajama + SkyPile at 50/50 over the slice, 32 windows of 129 tokens a step (so 2 ranks
    split it), `holdout_docs` held out of each: built into `dir/mix`."""
    from tinyllama.data.build import build_mix

    holdout = f"holdout_docs = {holdout_docs}" if holdout_docs else ""
    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
    dedup = "none"
    {holdout}

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    dedup = "none"
    {holdout}
    """
    stages = """
    [[stages]]
    name = "basic"
    tokens = "100K"
    batch_tokens = "4128"
    weights = { slimpajama = 0.5, skypile = 0.5 }
    """
    build_mix(write_spec(dir, corpora=corpora, stages=stages), dir / "mix", workers, progress=False)
    return dir / "mix"


@pytest.fixture
def spec_file(tmp_path) -> Path:
    return write_spec(tmp_path)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a mix dir except the human log and the build's lock file (neither is part
    of the mix: they differ between builds), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".log") and p.name != ".lock"
    }


def build_aborted_at(spec: Path, out: Path, points: list[str], workers: int = 2) -> None:
    """Run `mix build` as a subprocess once per fault point (`TINYLLAMA_ABORT_AFTER=POINT:N`,
    tinyllama/fault.py), each run resuming what the previous ones committed and aborting (no
    clean-up: what a SIGKILL leaves) right after POINT's N-th new commit, then once more
    uninterrupted. Every aborted run must leave staging and no `mix.json`."""
    cmd = [sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out", str(out),
           "--workers", str(workers), "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYLLAMA_")}
    for point in points:
        r = subprocess.run(cmd, env={**env, "TINYLLAMA_ABORT_AFTER": point}, capture_output=True, text=True,
                           timeout=600, check=False)
        assert r.returncode == -signal.SIGABRT, (point, r.returncode, r.stderr[-2000:])
        assert f"aborting after {point.replace(':', ' #')}" in r.stderr
        assert (out / ".staging").is_dir() and not (out / "mix.json").exists(), point
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


# ---- a real S3-compatible server (moto's server mode) on 127.0.0.1, for the object-storage tests --


@pytest.fixture(scope="session")
def server():
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    yield f"http://127.0.0.1:{port}"
    srv.stop()


@pytest.fixture
def s3(server, monkeypatch):
    """The standard AWS environment pointing at the local server, and a fresh bucket."""
    for k, v in {"AWS_ENDPOINT_URL": server, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "TINYLLAMA_S3_RETRIES": "3"}.items():
        monkeypatch.setenv(k, v)
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=server, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    name = f"b{_free_port()}"
    client.create_bucket(Bucket=name)
    return name, client


@pytest.fixture(scope="session")
def signed_server(tmp_path_factory):
    """A second moto server, in a process of its own, that checks every request's SigV4 signature
    and its IAM rights (moto's `INITIAL_NO_AUTH_ACTION_COUNT`: the first 6 requests, which create
    the users, go unchecked). Yields (endpoint, {user: (key id, secret)}): "writer" may do anything
    with S3, "reader" only list and read."""
    import json
    import socket
    import time

    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("signed-server") / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "6"}, stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        rights = {"writer": ["s3:*"], "reader": ["s3:GetObject", "s3:List*"]}
        keys = {}
        for user, actions in rights.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            k = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        yield url, keys
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture
def signed_s3(signed_server, monkeypatch):
    """As `s3`, against the server that checks signatures, as its "writer" user."""
    url, keys = signed_server
    key, secret = keys["writer"]
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": key,
                 "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1", "TINYLLAMA_S3_RETRIES": "3"}.items():
        monkeypatch.setenv(k, v)
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key,
                          aws_secret_access_key=secret)
    name = f"b{_free_port()}"
    client.create_bucket(Bucket=name)
    return name, client


@pytest.fixture(params=["s3", "signed_s3"])
def any_s3(request):
    """The core object-storage tests run on both servers: moto as it is (`s3`), and moto checking
    every request's signature and rights (`signed_s3`). `SIGNED_IN_SLOW` keeps the second for the
    slow run where a test is heavy."""
    return request.getfixturevalue(request.param)


SIGNED_IN_SLOW = pytest.mark.parametrize("any_s3", ["s3", pytest.param("signed_s3", marks=pytest.mark.slow)],
                                         indirect=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
