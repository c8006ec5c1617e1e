"""What is safe in `mix build` and where a mix is used (issue 16, data side), on the real slice:
the output dir's lock, "up to date" meaning every file the lock names verifies, `--out` that
deletes nothing it did not create, and integrity checks where data is read (the lock's pins at
open, each shard's checksum at first touch, staged parts before packing, token ids against
the vocabulary)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zstandard
from conftest import CORPORA, TOKENIZER_ZST, tree_bytes, write_spec

import tinyllama
from tinyllama import _core
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec
from tinyllama.errors import LockedError, ShardError, SpecError


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One clean build: (spec, mix dir, its bytes)."""
    tmp = tmp_path_factory.mktemp("clean")
    spec = write_spec(tmp)
    build_mix(spec, tmp / "mix", workers=2, progress=False)
    return spec, tmp / "mix", tree_bytes(tmp / "mix")


def all_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root, the lock file and the log included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_of(clean, tmp_path: Path) -> Path:
    out = tmp_path / "mix"
    shutil.copytree(clean[1], out)
    return out


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def cli_build(spec: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "build", "--spec", str(spec), "--out",
                           str(out), "--workers", "2", "--quiet", *extra], capture_output=True, text=True)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ---- 1. the output dir's lock ---------------------------------------------------------------


HOLD = textwrap.dedent("""
    import sys
    from tinyllama.lock import exclusive_dir_lock
    with exclusive_dir_lock(sys.argv[1], "test holder"):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_a_second_build_on_a_held_dir_fails_naming_the_pid_and_changes_nothing(clean, tmp_path):
    spec, _, expected = clean
    out = copy_of(clean, tmp_path)
    (out / "corpora/skypile/shard-00000.bin").unlink()  # so a build would have work to do
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = all_bytes(out)
        line = one_line_error(cli_build(spec, out))
        assert f"pid {holder.pid}" in line and "nothing was changed" in line, line
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            build_mix(spec, out, workers=1, progress=False)
        assert all_bytes(out) == before  # the lock file itself included
    finally:
        holder.stdin.close()
        holder.wait()
    # Released (the holder exited): the dir builds, to the clean bytes.
    done = cli_build(spec, out)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(out) == expected
    assert (out / ".lock").exists() and ".lock" not in tree_bytes(out)


# ---- 2. "up to date" checks what the lock names ----------------------------------------------


def flip_footer_checksum(path: Path) -> None:
    """A byte of the checksum the shard's footer stores (the footer's last 16 bytes begin with
    it): the shard no longer agrees with its manifest entry."""
    flip(path, path.stat().st_size - 16)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [
    "delete a shard", "truncate a shard", "flip a byte in a shard's footer",
    "flip a byte in a holdout shard's footer", "edit a manifest", "delete the schedule",
])
def test_up_to_date_means_every_file_the_lock_names_verifies(clean, tmp_path, damage):
    spec, _, expected = clean
    out = copy_of(clean, tmp_path)
    target = {
        "delete a shard": "corpora/starcoder/shard-00000.bin",
        "truncate a shard": "corpora/skypile/shard-00000.bin",
        "flip a byte in a shard's footer": "corpora/slimpajama/shard-00001.bin",
        "flip a byte in a holdout shard's footer": "corpora/slimpajama/holdout-00000.bin",
        "edit a manifest": "corpora/skypile/manifest.json",
        "delete the schedule": "schedule.json",
    }[damage]
    path = out / target
    if damage.startswith("delete"):
        path.unlink()
    elif damage.startswith("truncate"):
        truncate(path)
    elif damage.startswith("edit"):
        path.write_text(path.read_text().replace('"docs_read"', '"docs_read" ', 1))
    else:
        flip_footer_checksum(path)
    summary = build_mix(spec, out, workers=2, progress=False)
    assert not summary["up_to_date"]
    assert Path(target).name in summary["rebuilt"]
    assert tree_bytes(out) == expected
    assert build_mix(spec, out, workers=2, progress=False)["up_to_date"]


def test_up_to_date_reads_no_shard_data_a_flipped_data_byte_is_caught_at_first_touch(clean, tmp_path):
    """"Up to date" checks each shard's size and footer against its manifest, not its data (a
    rerun on a 2T-token mix must not read every shard): a byte flipped inside a shard's data
    is caught by `mix verify` and by the first read of that shard."""
    spec, _, _ = clean
    out = copy_of(clean, tmp_path)
    flip(out / "corpora/slimpajama/shard-00001.bin", 1000)
    assert build_mix(spec, out, workers=2, progress=False)["up_to_date"]
    mix = tinyllama.Mix(out)
    with pytest.raises(ShardError, match=r"slimpajama/shard-00001\.bin.*checksum mismatch"):
        mix.verify()
    with pytest.raises(ShardError, match=r"slimpajama/shard-00001\.bin.*checksum mismatch"):
        list(mix.documents("slimpajama"))


def test_cli_says_why_it_rebuilt(clean, tmp_path):
    spec, _, expected = clean
    out = copy_of(clean, tmp_path)
    flip_footer_checksum(out / "corpora/skypile/shard-00000.bin")
    done = cli_build(spec, out)
    assert done.returncode == 0, done.stderr
    assert "rebuilt" in done.stdout and "shard-00000.bin" in done.stdout and "checksum" in done.stdout
    assert tree_bytes(out) == expected


# ---- 3. --out deletes nothing it did not create ----------------------------------------------


def test_a_non_empty_dir_that_is_not_a_mix_dir_is_refused_untouched(clean, tmp_path):
    spec = clean[0]
    out = tmp_path / "work"
    (out / "corpora").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "corpora/keep.bin").write_bytes(b"precious")
    before = all_bytes(out)
    line = one_line_error(cli_build(spec, out))
    assert str(out) in line and "not a mix dir" in line and "nothing was changed" in line, line
    with pytest.raises(SpecError, match="not a mix dir"):
        build_mix(spec, out, workers=1, progress=False, force=True)  # --force does not cover it
    assert all_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["corpora", "notes.txt"]  # no .lock either


def test_a_mix_of_another_spec_is_only_replaced_with_force(clean, tmp_path):
    spec, _, expected = clean
    out = copy_of(clean, tmp_path)
    (tmp_path / "other").mkdir()
    other = write_spec(tmp_path / "other")
    other.write_text(other.read_text().replace("seed = 7", "seed = 8"))
    before = tree_bytes(out)
    line = one_line_error(cli_build(other, out))
    assert "another spec" in line and "--force" in line and "nothing was changed" in line, line
    assert tree_bytes(out) == before  # (the refusal comes under the lock: .lock names its last holder)
    done = cli_build(other, out, "--force")
    assert done.returncode == 0, done.stderr
    assert tinyllama.Mix(out).inspect()["seed"] == 8
    # and back, with force, to the very bytes of the first spec
    assert build_mix(spec, out, workers=2, progress=False, force=True)["files_processed"] > 0
    assert tree_bytes(out) == expected


# ---- 4a. mix.json pins what the mix is read through ------------------------------------------


@pytest.mark.parametrize("rel", ["schedule.json", "tokenizer.json", "corpora/starcoder/manifest.json", "mix.json"])
def test_an_edited_pinned_file_is_refused_at_open(clean, tmp_path, rel):
    out = copy_of(clean, tmp_path)
    path = out / rel
    text = path.read_text()
    if rel == "mix.json":  # a changed weight: inspect would show what the sampler does not use
        edited = text.replace('"skypile": 0.3', '"skypile": 0.4', 1).replace('"starcoder": 0.2', '"starcoder": 0.1', 1)
    elif rel == "schedule.json":  # same length, same JSON shape: only a hash sees it
        edited = text.replace('"seed":7', '"seed":8', 1).replace('"seed": 7', '"seed": 8', 1)
    else:
        edited = text.replace("}", " }", 1)
    assert edited != text
    path.write_text(edited)
    name = Path(rel).name
    with pytest.raises(ShardError, match=rf"{name}.*(sha256|edited)"):
        tinyllama.Mix(out)
    with pytest.raises(ShardError, match=rf"{name}.*(sha256|edited)"):
        _core.MixSampler(str(out))
    with pytest.raises(ShardError, match=rf"{name}.*(sha256|edited)"):
        _core.Loader(str(out))
    done = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "inspect", str(out)],
                          capture_output=True, text=True)
    assert name in one_line_error(done)


def test_a_mix_of_the_older_format_says_rebuild_and_rebuilds(clean, tmp_path):
    spec, _, expected = clean
    out = copy_of(clean, tmp_path)
    lock = json.loads((out / "mix.json").read_text())
    for key in ("sha256", "lock_sha256"):
        lock.pop(key)
    lock["format_version"] = 1
    (out / "mix.json").write_text(json.dumps(lock, indent=2) + "\n")
    with pytest.raises(SpecError, match=r"mix\.json: a mix of format 1.*rebuild"):
        tinyllama.Mix(out)
    with pytest.raises(SpecError, match="rebuild"):
        _core.MixSampler(str(out))
    summary = build_mix(spec, out, workers=2, progress=False)  # same spec: no --force needed
    assert "format 1" in summary["rebuilt"]
    assert tree_bytes(out) == expected


# ---- 4b. a shard is verified the first time it is read ---------------------------------------


def test_a_flipped_byte_in_a_shard_stops_the_sampler_loader_and_documents(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    flip(out / "corpora/skypile/shard-00000.bin", 4000)  # a token byte: still a valid id
    mix = tinyllama.Mix(out)  # opening reads no shard
    with pytest.raises(ShardError, match=r"skypile/shard-00000\.bin.*checksum mismatch"):
        for step in range(mix.num_steps()):
            mix.batch(step)
    loader = mix.loader(pin=False)
    with pytest.raises(ShardError, match=r"skypile/shard-00000\.bin.*checksum mismatch"):
        for _batch in loader:
            pass
    with pytest.raises(ShardError, match=r"skypile/shard-00000\.bin.*checksum mismatch"):
        list(mix.documents("skypile"))
    # the other corpora still read
    assert sum(len(d) for d in mix.documents("starcoder")) == mix.inspect()["corpora"]["starcoder"]["tokens"]


def test_a_shard_swapped_for_another_is_named(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    shard = out / "corpora/slimpajama/shard-00000.bin"
    shutil.copyfile(out / "corpora/slimpajama/shard-00001.bin", shard)  # valid, but not this one
    with pytest.raises(ShardError, match=r"slimpajama/shard-00000\.bin.*manifest"):
        _core.MixSampler(str(out))
    with pytest.raises(ShardError, match=r"slimpajama/shard-00000\.bin.*manifest"):
        next(tinyllama.Mix(out).documents("slimpajama"))


# ---- 4c. staged parts are verified before packing --------------------------------------------


def _config(spec: Path, out: Path) -> str:
    return json.dumps(load_spec(spec).build_config(out, 1), sort_keys=True)


def test_a_flipped_byte_in_a_staged_part_is_never_packed(clean, tmp_path):
    spec, _, expected = clean
    out = tmp_path / "mix"
    plan = _core.BuildPlan(_config(spec, out))
    assert not plan.prepare()
    for c, (_name, n_files, _deduped) in enumerate(plan.corpora()):
        for i in range(n_files):
            plan.tokenize(c, i)
    part = out / ".staging/skypile/parts/000000.bin"
    flip(part, 64)  # a token byte
    with pytest.raises(ShardError, match=r"skypile/parts/000000\.bin.*(damaged|checksum)"):
        plan.pack_layout(1)
    with pytest.raises(ShardError, match=r"skypile/parts/000000\.bin"):
        plan.finish()
    assert not (out / "mix.json").exists()
    # The rerun redoes the damaged part (the others resume) and packs the clean bytes.
    summary = build_mix(spec, out, workers=2, progress=False)
    assert summary["files_processed"] == 1 and summary["files_resumed"] > 0
    assert tree_bytes(out) == expected


# ---- 4d. a token id past the vocabulary names the shard and the document ---------------------


def test_a_token_id_past_the_vocabulary_names_the_shard_and_document(tmp_path):
    """A tokenizer.json whose vocabulary has a hole (one byte-fallback entry removed: 31999
    entries, ids up to 31999) builds shards holding id 31999 ("给", common in SkyPile); reading
    them is one error naming the shard and the document, not an index error in the model's
    embedding."""
    from tinyllama.data.shards import open_shard

    tok = json.loads(zstandard.ZstdDecompressor().decompress(TOKENIZER_ZST.read_bytes()))
    del tok["model"]["vocab"]["<0x61>"]
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(tok))
    assert tinyllama.Tokenizer(tokenizer).vocab_size == 31999
    corpora = f'[corpora.c]\npaths = ["{CORPORA}/skypile/*.jsonl"]\n'
    stages = '[[stages]]\ntokens = "20K"\nbatch_tokens = 1024\nweights = { c = 1.0 }\n'
    spec = write_spec(tmp_path, corpora=corpora, stages=stages)
    spec.write_text(spec.read_text().replace(str(TOKENIZER_ZST), str(tokenizer)))
    build_mix(spec, tmp_path / "mix", workers=1, progress=False)
    mix = tinyllama.Mix(tmp_path / "mix")
    # The first document holding an id past the vocabulary, by the raw reader (no checks).
    first = next((entry["name"], i) for entry in mix.manifest("c")["shards"]
                 for i, doc in enumerate(open_shard(tmp_path / "mix/corpora/c" / entry["name"]))
                 if doc.max() >= 31999)
    message = rf"c/{first[0]}: document {first[1]}: token id 31999 is outside the tokenizer's vocabulary of 31999"
    with pytest.raises(ShardError, match=message):
        list(mix.documents("c"))
    with pytest.raises(ShardError, match=message):
        mix.verify()
    with pytest.raises(ShardError, match="token id 31999 is outside"):
        for step in range(mix.num_steps()):
            mix.batch(step)
