"""Provenance: `Mix.trace` / `tinyllama mix trace` name, for every sequence of a batch, the
document fragments it is made of (corpus, input file, row, token span); concatenated they are
the batch's tokens, and each names the input record it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPORA, write_spec

import tinyllama

ROOT = Path(__file__).resolve().parents[2]

STAGES = """
[[stages]]
name = "basic"
tokens = "20K"
batch_tokens = 1024
weights = { slimpajama = 0.5, skypile = 0.5 }
"""


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> tinyllama.Mix:
    from tinyllama.data.build import build_mix

    d = tmp_path_factory.mktemp("trace")
    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
    dedup = "exact"

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    """
    build_mix(write_spec(d, corpora=corpora, stages=STAGES), d / "mix", 2, progress=False)
    return tinyllama.Mix(d / "mix")


@pytest.mark.parametrize("step, rank, world", [(0, 0, 1), (7, 1, 2), (19, 3, 4)])
def test_fragments_rebuild_the_batch(mix, step, rank, world):
    tokens, corpora = mix.batch(step, rank, world)
    df = mix.trace(step, rank, world)
    docs = {c: list(mix.documents(c)) for c in mix.corpora}
    sources = {c: list(mix.document_sources(c)) for c in mix.corpora}
    assert sorted(set(df["seq"].to_list())) == list(range(len(tokens)))
    for i, row in enumerate(tokens):
        frags = df.filter(df["seq"] == i).to_dicts()
        assert {f["corpus"] for f in frags} == {corpora[i]}
        rebuilt = np.concatenate([docs[f["corpus"]][f["doc"]][f["doc_start"] : f["doc_end"]] for f in frags])
        assert np.array_equal(rebuilt.astype(np.int64), row)
        assert [f["seq_start"] for f in frags] == list(np.cumsum([0] + [f["doc_end"] - f["doc_start"]
                                                                         for f in frags])[:-1])
        for f in frags:
            assert (f["source"], f["row"]) == sources[f["corpus"]][f["doc"]]


def test_a_fragment_names_its_input_record(mix):
    """The named file and line hold the text whose tokens the fragment carries."""
    df = mix.trace(3)
    frag = next(f for f in df.to_dicts() if f["corpus"] == "skypile" and f["doc_end"] - f["doc_start"] > 20)
    source = frag["source"]  # as the manifest names it: its path under its pattern's dir, {CORPORA}/skypile
    lines = (CORPORA / "skypile" / source).read_text(encoding="utf-8").splitlines()
    text = json.loads(lines[frag["row"]])["text"]
    tok = tinyllama.Tokenizer(mix.tokenizer_path)
    ids = tok.encode(text).tolist()
    doc = list(mix.documents("skypile"))[frag["doc"]].tolist()
    assert doc[1:-1] == ids  # <s> text </s>


def test_cli_trace(mix):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "trace", str(mix.path), "--step", "7",
                        "--rank", "1", "--world", "2", "--json"], capture_output=True, text=True, env=env, check=True)
    got = json.loads(r.stdout)["fragments"]
    assert got == mix.trace(7, 1, 2).to_dicts()
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "trace", str(mix.path), "--step", "7"],
                       capture_output=True, text=True, env=env, check=True)
    first = mix.trace(7).to_dicts()[0]
    assert first["source"] in r.stdout and "doc tokens" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tinyllama.cli", "mix", "trace", str(mix.path), "--step", "-2"],
                       capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 1 and "--step -2" in r.stderr and "Traceback" not in r.stderr
