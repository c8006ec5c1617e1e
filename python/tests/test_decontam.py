"""The `decontaminate` filter on the real slice, against real benchmark items.

The items are the test suite's own evaluation task (python/tests/data/harness/continuation.jsonl:
96 items, context + two choices, cut from held-out slimpajama and skypile documents), plus small
task files in the model-card tasks' layouts (hellaswag jsonl, arc parquet, winogrande JSON
array, boolq) written here from real slice text. What is measured:

- on the whole English and Chinese slice, the filter's verdicts equal, reason for reason, those
  of an independent Python implementation of the documented rule (normalise, 13-grams, short
  passages whole, first hit in document order): 27 of 1200 English documents and 48 of 400
  Chinese ones are dropped, and each of those 48 is the document its item was cut from;
- items planted verbatim, upper-cased with punctuation changed, in real documents: dropped,
  naming the task and the item; their first 12 words only: kept; real documents sharing
  short phrases with the items (Debian changelog headers, the copyright-format line): kept;
- settings record file names and sha256, never paths; errors name the file or the key.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import CORPORA, DATA

from tinyllama import _core

TASK = DATA / "harness" / "continuation.jsonl"
N = 13


# --- an independent implementation of the documented rule (the oracle) ---------------------


def _cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF
        or 0x3400 <= o <= 0x4DBF
        or 0x4E00 <= o <= 0x9FFF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3134F
    )


def _alnum(ch: str) -> bool:
    """Unicode Alphabetic or Numeric (the Rust side's rule). Python's isalnum() leaves out the
    Other_Alphabetic symbols; of those only the circled letters (U+24B6..U+24E9, `ⓒ`) occur in
    the slice."""
    return ch.isalnum() or 0x24B6 <= ord(ch) <= 0x24E9


def words(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        if ch.isspace() or _cjk(ch):
            if cur:
                out.append(cur)
            cur = ""
            if _cjk(ch):
                out.append(ch)
        elif _alnum(ch):
            cur += ch.lower()
    if cur:
        out.append(cur)
    return out


class Oracle:
    def __init__(self, task: str, passages_per_item: list[list[str]], n: int = N):
        self.task, self.n, self.index, short = task, n, {}, set()
        for item, passages in enumerate(passages_per_item):
            for p in passages:
                w = words(p)
                if len(w) >= n:
                    grams = [" ".join(w[i : i + n]) for i in range(len(w) - n + 1)]
                elif w:
                    grams = [" ".join(w)]
                    short.add(len(w))
                else:
                    grams = []
                for g in grams:
                    self.index.setdefault(g, item)
        self.short = sorted(short)

    def judge(self, text: str) -> tuple[str, str] | None:
        w = words(text)
        for i in range(len(w)):
            for k in [self.n, *self.short]:
                if k <= len(w) - i:
                    g = " ".join(w[i : i + k])
                    if g in self.index:
                        return ("decontaminate", f'decontaminated: {self.task}#{self.index[g]}: "{g}"')
        return None


def continuation_passages(item: dict) -> list[str]:
    return [p for c in item["choices"] for p in (f"{item['context']} {c}", item["context"] + c)]


# --- data -------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return _jsonl(TASK)


@pytest.fixture(scope="module")
def english() -> list[str]:
    return [
        r["text"]
        for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst"))
        for r in _jsonl(f)
        if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"
    ]


@pytest.fixture(scope="module")
def chinese() -> list[str]:
    return [r["text"] for r in _jsonl(CORPORA / "skypile" / "2023-01.jsonl")]


def settings(*paths: Path, **extra) -> str:
    return json.dumps({"paths": [str(p) for p in paths], **extra})


def judge(texts: list[str], *paths: Path, **extra) -> list:
    return _core.judge_documents([("decontaminate", settings(*paths, **extra))], texts)


# --- the slice against the real task ----------------------------------------------------------


def test_slice_verdicts_equal_the_oracle(items, english, chinese):
    oracle = Oracle("continuation", [continuation_passages(it) for it in items])
    for docs, dropped in ((english, 27), (chinese, 48)):
        got = judge(docs, TASK)
        assert got == [oracle.judge(t) for t in docs]
        assert sum(v is not None for v in got) == dropped


def test_source_documents_of_the_chinese_items_are_dropped_naming_their_item(items, chinese):
    got = judge(chinese, TASK)
    for i, it in enumerate(items):
        if it["corpus"] != "skypile":
            continue
        sources = [d for d, t in enumerate(chinese) if it["context"] in t]
        assert len(sources) == 1, it["id"]
        assert got[sources[0]][1].startswith(f"decontaminated: continuation#{i}: "), (it["id"], got[sources[0]])


def test_kept_documents_do_share_short_phrases_with_the_items(items, english):
    """The slice's Debian changelogs and copyright files share headers with the items: proof
    that the kept documents were not kept for lack of any overlap."""
    got = judge(english, TASK)
    item_5grams = {
        " ".join(w[i : i + 5])
        for it in items
        for p in continuation_passages(it)
        for w in [words(p)]
        for i in range(len(w) - 4)
    }
    sharing = [
        t
        for t, v in zip(english, got)
        if v is None and any(" ".join(w[i : i + 5]) in item_5grams for w in [words(t)] for i in range(len(w) - 4))
    ]
    assert len(sharing) >= 50


# --- planted items ----------------------------------------------------------------------------


def _answer(it: dict) -> str:
    return it["context"] + it["choices"][it["label"]]


def _plant(doc: str, text: str) -> str:
    cut = doc.find(" ", len(doc) // 2)
    cut = len(doc) if cut < 0 else cut
    return f"{doc[:cut]} {text} {doc[cut:]}"


def _mangle(text: str) -> str:
    """Upper case, and punctuation changed around and inside words."""
    return re.sub(r"\s+", lambda m: ", " if len(m.group()) == 1 else "; ", text.upper()).replace(".", "!")


@pytest.fixture(scope="module")
def clean_docs(english, items):
    got = judge(english, TASK)
    docs = [t for t, v in zip(english, got) if v is None and len(t.split()) > 100]
    assert len(docs) >= 10
    return docs[:10]


def test_planted_items_are_dropped_naming_task_and_item(items, clean_docs):
    long_items = [i for i, it in enumerate(items) if len(words(_answer(it))) >= N]
    en = [i for i in long_items if items[i]["corpus"] == "slimpajama"][:3]
    zh = [i for i in long_items if items[i]["corpus"] == "skypile"][:3]
    assert len(en) == 3 and len(zh) == 3
    for k, i in enumerate(en + zh):
        doc = clean_docs[k]
        for planted in (_plant(doc, _answer(items[i])), _plant(doc, _mangle(_answer(items[i])))):
            [verdict] = judge([planted], TASK)
            assert verdict is not None, (i, planted)
            assert verdict[1].startswith(f"decontaminated: continuation#{i}: "), (i, verdict)
            gram = verdict[1].split(": ", 2)[2].strip('"')
            assert len(gram.split()) == N and gram in " ".join(words(_answer(items[i])))
        # n - 1 words of the item are a common phrase, not contamination.
        first = " ".join(_answer(items[i]).split()[: N - 1]) if i in en else "".join(words(_answer(items[i]))[: N - 1])
        assert len(words(first)) <= N - 1
        assert judge([_plant(doc, first)], TASK) == [None]


def test_a_short_item_matches_only_as_a_whole(items, clean_docs):
    i = next(i for i, it in enumerate(items) if it["corpus"] == "slimpajama" and 4 <= len(words(_answer(it))) < N)
    whole = _answer(items[i])
    [verdict] = judge([_plant(clean_docs[0], whole)], TASK)
    assert verdict is not None and verdict[1].startswith("decontaminated: continuation#")
    assert verdict[1].endswith(f'"{" ".join(words(whole))}"')
    # Without its last word it is shorter than the item: kept.
    assert judge([_plant(clean_docs[0], " ".join(whole.split()[:-1]))], TASK) == [None]


def test_unchanged_documents_of_other_corpora_are_kept(items):
    code = pq.read_table(next((CORPORA / "starcoderdata").rglob("*.parquet")), columns=["content"])
    texts = code.column("content").to_pylist()
    assert judge(texts, TASK) == [None] * len(texts)


def test_ngram_setting(items, clean_docs):
    i = next(i for i, it in enumerate(items) if len(words(_answer(it))) >= N)
    nine = " ".join(_answer(items[i]).split()[:9])
    planted = _plant(clean_docs[1], nine)
    assert judge([planted], TASK) == [None]
    [verdict] = judge([planted], TASK, ngram=8)
    assert verdict is not None and f"continuation#{i}" in verdict[1]


# --- the model-card layouts ------------------------------------------------------------------


@pytest.fixture(scope="module")
def card_tasks(tmp_path_factory, english, chinese):
    """hellaswag / arc_easy / winogrande / boolq files holding real sentences of the slice."""
    root = tmp_path_factory.mktemp("eval-data")
    long_docs = [t for t in english if len(t.split()) > 200]
    s = [" ".join(t.split()[100:130]) for t in long_docs[:6]]  # 30-word real passages
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "validation.jsonl").write_text(
        json.dumps({"ctx": "unrelated start", "endings": ["a", "b"], "label": "0"})
        + "\n"
        + json.dumps({"ctx": s[0][:80], "endings": [s[0][80:], "something else"], "label": "0"})
        + "\n"
    )
    (root / "arc_easy").mkdir()
    pq.write_table(
        pa.table(
            {
                "question": ["Which is it?", chinese[10][:40]],
                "choices": [
                    {"text": ["x", "y"], "label": ["A", "B"]},
                    {"text": [chinese[10][40:60], "否"], "label": ["A", "B"]},
                ],
                "answerKey": ["A", "A"],
            }
        ),
        root / "arc_easy" / "test.parquet",
    )
    words2 = s[1].split()
    (root / "winogrande").mkdir()
    (root / "winogrande" / "validation.json").write_text(
        json.dumps(
            [
                {
                    "sentence": " ".join(words2[:10] + ["_"] + words2[11:]),
                    "option1": "nobody",
                    "option2": words2[10],
                    "answer": "2",
                }
            ]
        )
    )
    (root / "boolq").mkdir()
    (root / "boolq" / "validation.jsonl").write_text(
        json.dumps({"question": "is it", "passage": s[2], "label": True}) + "\n"
    )
    return root, s


def test_model_card_layouts(card_tasks, chinese, clean_docs):
    root, s = card_tasks
    files = [
        root / "hellaswag/validation.jsonl",
        root / "arc_easy/test.parquet",
        root / "winogrande/validation.json",
        root / "boolq/validation.jsonl",
    ]
    doc = clean_docs[2]
    cases = [(s[0], "hellaswag#1"), (chinese[10][:60], "arc_easy#1"), (s[1], "winogrande#0"), (s[2], "boolq#0")]
    for text, named in cases:
        [verdict] = judge([_plant(doc, text)], *files)
        assert verdict is not None and verdict[1].startswith(f"decontaminated: {named}: "), (named, verdict)
    assert judge([doc, s[3], chinese[11]], *files) == [None, None, None]
    [recorded] = _core.filter_settings([("decontaminate", settings(*files))])
    assert [f["task"] for f in json.loads(recorded)["files"]] == ["hellaswag", "arc_easy", "winogrande", "boolq"]


# --- settings and errors ----------------------------------------------------------------------


def test_settings_are_relocatable(tmp_path):
    copy = tmp_path / "elsewhere" / "continuation.jsonl"
    copy.parent.mkdir()
    shutil.copy(TASK, copy)
    [a] = _core.filter_settings([("decontaminate", settings(TASK))])
    [b] = _core.filter_settings([("decontaminate", settings(copy))])
    assert a == b
    recorded = json.loads(a)
    assert recorded == {
        "ngram": 13,
        "files": [
            {
                "name": "continuation.jsonl",
                "task": "continuation",
                "items": 96,
                "sha256": hashlib.sha256(TASK.read_bytes()).hexdigest(),
            }
        ],
    }
    assert str(DATA) not in a and str(tmp_path) not in b


def test_errors_name_the_file_or_key(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(_core.SpecError, match=re.escape(str(missing))):
        judge(["x"], missing)
    no_text = next((CORPORA / "starcoderdata").rglob("*.parquet"))  # rows have `content`, no `text`
    with pytest.raises(_core.InputError, match=re.escape(str(no_text)) + ".*row 0.*no text field"):
        judge(["x"], no_text)
    corrupt = tmp_path / "items.jsonl.zst"
    corrupt.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(_core.InputError, match=re.escape(str(corrupt))):
        judge(["x"], corrupt)
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(_core.InputError, match=re.escape(str(bad_line)) + ": line 2"):
        judge(["x"], bad_line)
    for params, key in [
        ({"paths": ["relative.jsonl"]}, "paths"),
        ({}, "paths"),
        ({"paths": [str(TASK)], "ngram": 0}, "ngram"),
        ({"paths": [str(TASK)], "n": 5}, "n"),
    ]:
        with pytest.raises(_core.SpecError, match=rf"filters\.decontaminate\.{key}\b"):
            _core.judge_documents([("decontaminate", json.dumps(params))], ["x"])
