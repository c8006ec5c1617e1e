"""Parity of the Rust quality heuristics (`gopher_quality`, `gopher_repetition`, `c4`,
`fineweb`) with datatrove's own filters on every document of the English test slice, with the
defaults and with overridden settings (one or two per filter), and on real documents of the slice
bent towards the rules the slice itself rarely trips (`variants`: bullets, ellipses, hashes,
repeats, lorem ipsum, curly brackets, CRLF, ...).

datatrove splits English words with spaCy's blank `en` tokenizer (spaCy must be installed for
datatrove's English filters); the Rust side ports that tokenizer from spaCy's own rules,
special-case second pass included (rust/filter/heuristics/words.rs), so decisions and reasons
are expected to agree document for document, and datatrove's reason strings are compared as is.

Disagreements seen on this slice (1212 docs), for all ten cases below: none (agreement
100.00 %, same reason on 100.00 % of the common drops); none on the 1320 bent documents either,
where every reason of the four filters but `gopher_long_doc`, `gopher_below/above_avg_threshold`
and `dup_para_char_frac` occurs (the Rust unit tests trigger those). Before the special-case second pass was
ported, one document differed (a BSD licence: spaCy merges the two quotes of `IS''` into one
`''` token, which moved its alpha-word share from exactly 0.8 to just under). Word splitting
itself was also compared once, token by token, with datatrove's `split_into_words` over the whole
English shared corpus (16,587 docs, 4.83 M tokens): no document differed. Known sources of
differences elsewhere: the word and non-space classes of spaCy's URL regex in CPython versus Rust regex (they
differ on a few rare code points). datatrove's C4 filter also rewrites the kept text (drops the
lines it filtered); only the decision is compared.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

pytest.importorskip("spacy")
filters = pytest.importorskip("datatrove.pipeline.filters")
zstandard = pytest.importorskip("zstandard")
from datatrove.data import Document  # noqa: E402
from datatrove.utils.text import TERMINAL_PUNCTUATION  # noqa: E402

from tinyllama import _core  # noqa: E402
from tinyllama.data import word_rules  # noqa: E402

# The Rust port splits words with spaCy's rules, read from the installed spaCy and datatrove.
WORD_RULES = word_rules.ensure()

DATA = Path(__file__).parent / "data" / "corpora" / "slimpajama"

# (spec name, our settings, datatrove class, its constructor arguments)
CASES = [
    ("gopher_quality", {}, filters.GopherQualityFilter, {}),
    ("gopher_quality", {"min_doc_words": 20}, filters.GopherQualityFilter, {"min_doc_words": 20}),
    ("gopher_repetition", {}, filters.GopherRepetitionFilter, {}),
    (
        "gopher_repetition",
        {"top_n_grams": [[2, 0.3], [3, 0.25]]},
        filters.GopherRepetitionFilter,
        {"top_n_grams": ((2, 0.3), (3, 0.25))},
    ),
    ("c4", {}, filters.C4QualityFilter, {}),
    ("c4", {"min_num_sentences": 2}, filters.C4QualityFilter, {"min_num_sentences": 2}),
    ("c4", {"split_paragraph": False}, filters.C4QualityFilter, {"split_paragraph": False}),
    ("fineweb", {}, filters.FineWebQualityFilter, {}),
    ("fineweb", {"short_line_length": 20}, filters.FineWebQualityFilter, {"short_line_length": 20}),
    ("fineweb", {"new_line_ratio": 0.1}, filters.FineWebQualityFilter, {"new_line_ratio": 0.1}),
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    out = []
    for path in sorted(DATA.rglob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            out += [json.loads(line)["text"] for line in f if line.strip()]
    assert len(out) > 1000
    return out


def datatrove_reasons(cls, kwargs: dict, texts: list[str]) -> list[str | None]:
    f = cls(**kwargs)
    out = []
    for i, t in enumerate(texts):
        r = f.filter(Document(text=t, id=str(i)))
        if r is True:
            out.append(None)
        elif r is False:
            out.append("")
        else:
            out.append(r[1])
    return out


@pytest.mark.parametrize("name,ours,cls,theirs", CASES, ids=[f"{c[0]}-{json.dumps(c[1])}" for c in CASES])
def test_decisions_and_reasons_match_datatrove(name, ours, cls, theirs, texts):
    want = datatrove_reasons(cls, theirs, texts)
    got = [None if r is None else r[1] for r in _core.judge_documents([(name, json.dumps(ours))], texts, 2)]
    # The check can fail: every filter must both keep and drop some documents of the slice.
    assert any(w is None for w in want) and any(w is not None for w in want)
    agree = [(w is None) == (g is None) for w, g in zip(want, got)]
    both = [(w, g) for w, g in zip(want, got) if w is not None and g is not None]
    same = sum(w == g for w, g in both)
    diffs = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    print(f"{name} {ours}: agreement {sum(agree) / len(texts):.4%}, same reason {same}/{len(both)}, diffs {diffs[:10]}")
    # Measured: every decision and every reason agrees (docs/benchmarks.md reports 100%).
    assert diffs == [], diffs[:20]
    assert all(agree) and same == len(both)


def variants(doc: str) -> list[str]:
    """Real documents bent towards the rules the slice rarely trips (bullets, ellipses, hashes,
    repeated paragraphs and lines, lorem ipsum, curly brackets, CRLF, upper case, policies)."""
    lines = doc.splitlines()
    return [
        doc.replace(" ", " #"),
        "\n".join(f"- {line}" for line in lines),
        "\n".join(f"{line}..." for line in lines),
        "\n\n".join([doc] * 3),
        doc + ("\n" + lines[0]) * 5,
        doc + "\nLorem ipsum dolor sit amet, consectetur adipiscing.",
        doc + "\nSee {the} code: x = {1, 2}.",
        doc.replace("\n", "\r\n"),
        doc.upper(),
        doc + "\nThis site uses cookies. Read our privacy policy.\nEnable JavaScript to see it.",
        doc + " " + "the act " * 40,
    ]


@pytest.mark.parametrize("name,ours,cls,theirs", CASES, ids=[f"{c[0]}-{json.dumps(c[1])}" for c in CASES])
def test_rarely_tripped_rules_match_datatrove(name, ours, cls, theirs, texts):
    bent = [v for t in texts[:120] if t.strip() for v in variants(t)]
    want = datatrove_reasons(cls, theirs, bent)
    got = [None if r is None else r[1] for r in _core.judge_documents([(name, json.dumps(ours))], bent, 2)]
    diffs = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    print(f"{name} {ours}: {len(bent)} bent docs, reasons {sorted(set(map(str, want)))}, diffs {diffs[:10]}")
    assert len(set(want)) >= 2
    assert diffs == [], diffs[:20]


def test_defaults_are_datatrove_constructor_defaults():
    classes = {
        "gopher_quality": filters.GopherQualityFilter,
        "gopher_repetition": filters.GopherRepetitionFilter,
        "c4": filters.C4QualityFilter,
        "fineweb": filters.FineWebQualityFilter,
    }
    names = list(classes)
    settings = _core.filter_settings([(n, "{}") for n in names])
    for name, resolved in zip(names, settings):
        resolved = json.loads(resolved)
        assert resolved.pop("word_rules") == WORD_RULES  # which rules split the words: recorded too
        params = inspect.signature(classes[name].__init__).parameters
        expected = {k: p.default for k, p in params.items() if k not in ("self", "exclusion_writer", "language")}
        renamed = {"short_line_thr": "short_line_thr"}
        expected = {renamed.get(k, k): v for k, v in expected.items()}
        if name == "gopher_quality":
            expected["stop_words"] = ["the", "be", "to", "of", "and", "that", "have", "with"]
        if name == "fineweb":
            assert expected.pop("stop_chars") is None
            assert set(resolved.pop("stop_chars")) == set(TERMINAL_PUNCTUATION)
        expected = json.loads(json.dumps(expected))  # tuples -> lists, as the lock records them
        assert resolved == expected, name


@pytest.mark.parametrize(
    "name,settings,key",
    [
        ("gopher_quality", {"min_doc_words": "fifty"}, "filters.gopher_quality.min_doc_words"),
        ("gopher_repetition", {"top_n_grams": [[2]]}, "filters.gopher_repetition.top_n_grams"),
        ("c4", {"min_num_sentences": 2.5}, "filters.c4.min_num_sentences"),
        ("fineweb", {"line_punct_threshold": 0.1}, "filters.fineweb.line_punct_threshold"),
    ],
)
def test_bad_setting_is_a_spec_error_naming_the_key(name, settings, key):
    with pytest.raises(_core.SpecError, match=key.replace(".", r"\.")):
        _core.judge_documents([(name, json.dumps(settings))], ["Some text."])
