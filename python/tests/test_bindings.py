"""The bindings' contract (issue 12, Rust side): one reader of tokenizer files (zstd by its magic
number, not its name), the special ids decided once by the core, misuse of the build stages and
of the sampler's / loader's step range raised as `UsageError`, and Ctrl-C answered by every long
call (here `dedup_files`, in a subprocess) without leaving partial output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CORPORA, TOKENIZER_ZST

import tinyllama
from tinyllama import _core
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec
from tinyllama.errors import TinyllamaError, UsageError

SMALL = """
name = "bindings"
seed = 7
seq_len = 64
tokenizer = "{tokenizer}"
shard_tokens = "50K"

[corpora.skypile]
paths = ["{corpora}/skypile/*.jsonl"]

[[stages]]
name = "basic"
tokens = "40K"
batch_tokens = "1K"
weights = {{ skypile = 1.0 }}
"""


def small_spec(dir: Path, tokenizer: Path) -> Path:
    spec = dir / "spec.toml"
    spec.write_text(SMALL.format(tokenizer=tokenizer, corpora=CORPORA))
    return spec


@pytest.fixture(scope="module")
def zstd_named_json(tmp_path_factory) -> Path:
    """The zstd-compressed Llama 2 tokenizer under the plain name `tokenizer.json`."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    shutil.copyfile(TOKENIZER_ZST, path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, zstd_named_json) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mix")
    spec = small_spec(tmp, zstd_named_json)
    build_mix(spec, tmp / "mix", workers=2, progress=False)
    return spec, tmp / "mix"


# ---- one reader of tokenizer files ------------------------------------------------------------


def test_a_zstd_tokenizer_named_tokenizer_json_is_copied_into_the_mix_as_plain_json(built, zstd_named_json):
    _, mix = built
    copied = (mix / "tokenizer.json").read_bytes()
    assert copied[:1] == b"{", copied[:8]
    json.loads(copied)
    assert copied == _core.read_tokenizer_json(zstd_named_json) == _core.read_tokenizer_json(TOKENIZER_ZST)
    m = tinyllama.Mix(mix)
    assert m.num_steps() > 0
    tokens, _ = m.batch(0)
    assert tokens.shape[1] == 65
    assert tinyllama.Tokenizer(mix / "tokenizer.json").sha256 == tinyllama.Tokenizer(zstd_named_json).sha256


def test_hf_export_reads_the_tokenizer_by_its_magic_number(zstd_named_json):
    from tinyllama.hf import _read_tokenizer_bytes

    assert _read_tokenizer_bytes(zstd_named_json)[:1] == b"{"


def test_special_ids_are_the_ones_the_build_writes(built, zstd_named_json):
    _, mix = built
    tok = tinyllama.Tokenizer(zstd_named_json)
    bos, eos, unk = tok.special_ids()
    assert (bos, eos, unk) == (tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.token_to_id("<unk>"))
    doc = next(tinyllama.Mix(mix).documents("skypile"))
    assert (int(doc[0]), int(doc[-1])) == (bos, eos)


# ---- UsageError -------------------------------------------------------------------------------


def test_usage_error_is_exported_and_a_tinyllama_error():
    assert tinyllama.UsageError is UsageError is _core.UsageError
    assert issubclass(UsageError, TinyllamaError)
    assert not issubclass(UsageError, tinyllama.SpecError)


def test_the_step_range_and_ranks_are_usage_errors(built):
    _, mix = built
    sampler = _core.MixSampler(str(mix))
    n = sampler.num_steps()
    with pytest.raises(UsageError, match=f"step {n} is past the end"):
        sampler.batch(n)
    with pytest.raises(UsageError, match="past the end"):
        sampler.weights_at(n)
    with pytest.raises(UsageError, match="rank 2 of world size 2"):
        sampler.samples(0, rank=2, world=2)
    with pytest.raises(UsageError, match="world size 0"):
        sampler.batch(0, rank=0, world=0)
    with pytest.raises(UsageError, match="outside the schedule"):
        _core.Loader(str(mix), start_step=n + 1)
    loader = _core.Loader(str(mix), slots=2)
    with pytest.raises(UsageError, match="cannot seek"):
        loader.seek(n + 1)


def test_build_stages_out_of_order_or_range_are_usage_errors(tmp_path, zstd_named_json):
    spec = small_spec(tmp_path, zstd_named_json)
    config = json.dumps(load_spec(spec).build_config(tmp_path / "mix", 1), sort_keys=True)
    plan = _core.BuildPlan(config)
    with pytest.raises(UsageError, match="not prepared: call prepare first"):
        plan.tokenize(0, 0)
    assert plan.prepare() is False
    with pytest.raises(UsageError, match="no corpus #5"):
        plan.tokenize(5, 0)
    with pytest.raises(UsageError, match="no input file #99"):
        plan.fingerprint(0, 99)


# ---- Ctrl-C -----------------------------------------------------------------------------------


DEDUP = textwrap.dedent("""
    import sys
    from tinyllama import _core
    paths, work = sys.argv[1].split(","), sys.argv[2]
    print("started", flush=True)
    try:
        out = _core.dedup_files(paths, "text", "{}", work, 1)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("finished", out["docs"], flush=True)
""")


# dedup_files' fault points (rust/build/fault.rs): Ctrl-C arrives right after the first file's
# fingerprints; the run must stop long before the LATE-th file (it aborts there if not).
FILES, LATE = 600, 101


def test_ctrl_c_stops_dedup_files_at_a_file_boundary_and_leaves_no_scratch(tmp_path):
    """SIGINT raised inside the work right after file 1 of 600 (a Ctrl-C at a chosen instant,
    not after a guessed delay): `KeyboardInterrupt` in Python, the work stopped within a few
    files (it would abort at file 101: ~1.6 s of work after the signal, 30x the 50 ms signal
    poll), and no scratch left."""
    files = sorted(str(p) for p in (CORPORA / "skypile").glob("*.jsonl")) * (FILES // 2)
    work = tmp_path / "work"
    env = {**os.environ, "TINYLLAMA_SIGNAL_AFTER": "fingerprint-scratch:1:SIGINT",
           "TINYLLAMA_ABORT_AFTER": f"fingerprint-scratch:{LATE}"}
    r = subprocess.run([sys.executable, "-c", DEDUP, ",".join(files), str(work)], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert "signal 2 after fingerprint-scratch #1" in r.stderr, r.stderr[-2000:]
    assert "aborting" not in r.stderr, "the work ran on 100 files past Ctrl-C"
    assert r.returncode == 130, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "interrupted" in r.stdout and "finished" not in r.stdout, r.stdout
    assert not (work / "fingerprints").exists() and not (work / "find").exists()
