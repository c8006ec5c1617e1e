"""tinyllama.Tokenizer against the Hugging Face `tokenizers` package (the oracle), on the
committed real-data slice."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tokenizers
import zstandard

import tinyllama

DATA = Path(__file__).parent / "data"
TOK_ZST = DATA / "tokenizers" / "llama2" / "tokenizer.json.zst"

TRICKY = [
    "",
    " ",
    "Hello world",
    "  two leading spaces",
    "multiple   spaces",
    "tab\tand\nnewline\r\n",
    "<s>literal</s> special <unk> tokens",
    "a<s>b <s> c",
    "▁ literal mark ▁▁",
    "emoji 😀👩‍👩‍👧🇫🇷",
    "rare CJK 𠀋𡈽 and 中文",
    "combining e\u0301 a\u0308",
    "\x00\x7f controls",
]


def _slice_docs() -> list[str]:
    docs: list[str] = []
    for path in sorted((DATA / "corpora").rglob("*")):
        name = path.name
        if name.endswith(".parquet"):
            docs.extend(pl.read_parquet(path, columns=["content"])["content"].to_list())
        elif name.endswith(".jsonl") or name.endswith(".jsonl.zst"):
            raw = path.read_bytes()
            if name.endswith(".zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
            docs.extend(json.loads(line)["text"] for line in raw.decode("utf-8").splitlines() if line)
    assert len(docs) > 100
    return docs


@pytest.fixture(scope="module")
def plain_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(TOK_ZST.read_bytes())).read()
    out.write_bytes(raw)
    return out


@pytest.fixture(scope="module")
def hf(plain_json) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(plain_json))
    except Exception as e:  # the oracle itself is broken: say so rather than a serde error
        pytest.fail(f"tokenizers {tokenizers.__version__} cannot load the Llama 2 tokenizer.json "
                    f"(merges as [a, b] pairs need tokenizers>=0.20): {e}")


@pytest.fixture(scope="module")
def tok() -> tinyllama.Tokenizer:
    return tinyllama.Tokenizer(TOK_ZST)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return _slice_docs() + TRICKY


def test_ids_identical_to_hf_on_the_slice(tok, hf, docs):
    ours = tok.encode_batch(docs)
    theirs = hf.encode_batch(docs, add_special_tokens=False)
    assert len(ours) == len(theirs) == len(docs)
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a.tolist() != b.ids]
    assert not bad, f"{len(bad)} documents differ, first: {docs[bad[0]][:80]!r}"
    assert all(isinstance(a, np.ndarray) for a in ours)


def test_add_special_tokens_gives_bos(tok, hf, docs):
    sample = docs[::50] + TRICKY
    ours = tok.encode_batch(sample, add_special_tokens=True)
    theirs = hf.encode_batch(sample, add_special_tokens=True)
    for a, b in zip(ours, theirs):
        assert a.tolist() == b.ids
        assert a[0] == 1
    assert tok.encode("", add_special_tokens=True).tolist() == [1]


def test_decode_round_trip(tok, hf, docs):
    for text in docs[::200] + ["Hello world", "tab\tand\nnewline", "中文 😀"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids.tolist(), skip_special_tokens=True)
        assert tok.decode(ids) == text


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "no-such-tokenizer.json"
    with pytest.raises(tinyllama.TokenizerError, match="no-such-tokenizer.json"):
        tinyllama.Tokenizer(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(tinyllama.TokenizerError, match="garbage.json"):
        tinyllama.Tokenizer(garbage)


def test_zst_and_plain_json_have_the_same_sha256(tok, plain_json):
    plain = tinyllama.Tokenizer(plain_json)
    expected = hashlib.sha256(plain_json.read_bytes()).hexdigest()
    assert plain.sha256 == tok.sha256 == expected
    assert plain.encode("same either way").tolist() == tok.encode("same either way").tolist()
    assert tok.vocab_size == 32000
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
