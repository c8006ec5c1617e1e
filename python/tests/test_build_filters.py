"""Quality filters, language id and decontamination inside `mix build`: the build drops exactly
what the filters decide on their own (`_core.judge_documents`, the same Rust filters), counts
it per filter and per file, reports every dropped document with its reason (decontamination
rows name the task and the item), records the resolved settings in the lock, keeps filters out
of dedup, and gives the same bytes whatever the threads and after kills.

Real data: the slimpajama (English) and skypile (Chinese) slices; the benchmark file is the
suite's own evaluation task (`harness/continuation.jsonl`), whose items were cut from these
very documents, so decontamination has real work; plus planted items (case and punctuation
changed) inside real documents."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("spacy")  # the heuristic filters' word rules come from spaCy and datatrove
pytest.importorskip("datatrove")
import zstandard
from conftest import CORPORA, DATA, build_aborted_at, tree_bytes, write_spec

import tinyllama
from tinyllama import _core
from tinyllama.data import word_rules
from tinyllama.data.build import build_mix
from tinyllama.data.spec import load_spec
from tinyllama.errors import SpecError

word_rules.ensure()

TASK = DATA / "harness" / "continuation.jsonl"
WEB_FILTERS = {"language": {"keep": ["en"], "min_score": 0.5}, "gopher_quality": {},
               "gopher_repetition": {}, "c4": {}, "fineweb": {}}
ZH_FILTERS = {"language": {"keep": ["zh"]}}


def _toml(filters: dict) -> str:
    def value(v):
        return json.dumps(v) if not isinstance(v, dict) else "{ " + ", ".join(
            f"{k} = {json.dumps(x)}" for k, x in v.items()) + " }"
    return "\n".join(f"{name} = {value(s)}" for name, s in filters.items())


def corpora_toml(web_filters: dict = WEB_FILTERS) -> str:
    return f"""
[corpora.web]
paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst", "planted.jsonl"]
exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
dedup = "near"
holdout_docs = 5

[corpora.web.filters]
{_toml(web_filters)}

[corpora.zh]
paths = ["{CORPORA}/skypile/*.jsonl"]
dedup = "exact"

[corpora.zh.filters]
{_toml(ZH_FILTERS)}

[decontaminate]
paths = ["tasks/*.jsonl"]
"""


STAGES = """
[[stages]]
name = "basic"
tokens = "50K"
batch_tokens = "4K"
weights = { web = 0.5, zh = 0.5 }
"""


def read_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def planted_docs() -> list[str]:
    """Real English documents that every web filter keeps, with a benchmark item planted
    inside: verbatim, and upper-cased with its punctuation changed; and one sharing only a
    short phrase with an item."""
    items = read_rows(TASK)
    english = [it for it in items if it["corpus"] == "slimpajama"]
    texts = [r["text"] for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")) for r in read_rows(f)
             if len(r["text"]) > 1000]
    web = [(n, json.dumps(v)) for n, v in WEB_FILTERS.items()]
    decont = [("decontaminate", json.dumps({"paths": [str(TASK)]}))]
    hosts = [t for t, v in zip(texts, _core.judge_documents(web + decont, texts)) if v is None]
    docs = []
    for k, it in enumerate(english[:4]):
        passage = it["context"] + it["choices"][it["label"]]
        if k % 2:
            # upper case; punctuation between words added, inside words changed
            passage = re.sub(r"\s+", lambda m: ", " if len(m.group()) == 1 else "; ", passage.upper())
            passage = passage.replace(".", "!")
        # a host the quality filters still keep with the item inside (so decontamination decides)
        for host in hosts:
            doc = host[: len(host) // 2] + "\n" + passage + "\n" + host[len(host) // 2:]
            if _core.judge_documents(web, [doc])[0] is None:
                docs.append(doc)
                hosts.remove(host)
                break
    assert len(docs) == 4, "the slice has too few documents the web filters keep"
    host = hosts[-1]
    short = " ".join(english[5]["context"].split()[:4])
    docs.append(host + "\n" + short)
    return docs


def make_spec(dir: Path, web_filters: dict = WEB_FILTERS) -> Path:
    (dir / "tasks").mkdir(exist_ok=True)
    shutil.copy(TASK, dir / "tasks" / "continuation.jsonl")
    (dir / "planted.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in planted_docs()))
    return write_spec(dir, "[dedup]\nngram = 5\n", corpora=corpora_toml(web_filters), stages=STAGES)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("filters")
    spec = make_spec(d)
    build_mix(spec, d / "mix", workers=2, progress=False)
    return spec, d / "mix"


def web_inputs(spec: Path) -> list[tuple[str, int, str]]:
    """(source as the manifest names it, row, text) of every web document the exclude rule lets
    through, in input order."""
    files = sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst"))
    out = []
    for f in files:
        for row, r in enumerate(read_rows(f)):
            if r["meta"]["redpajama_set_name"] != "RedPajamaGithub":
                # named by its path under its pattern's directory (slimpajama/train)
                out.append((f.relative_to(CORPORA / "slimpajama/train").as_posix(), row, r["text"]))
    out += [("planted.jsonl", row, r["text"]) for row, r in enumerate(read_rows(spec.parent / "planted.jsonl"))]
    return out


def chain(spec: Path, corpus: str) -> list[tuple[str, str]]:
    s = load_spec(spec)
    filters = [(n, json.dumps(v)) for n, v in s.corpora[corpus].filters.items()]
    d = s.decontaminate
    return filters + [("decontaminate", json.dumps({"paths": [str(p) for p in d.paths], "ngram": d.ngram}))]


def test_the_build_drops_what_the_filters_decide_and_reports_it(built):
    spec, out = built
    docs = web_inputs(spec)
    verdicts = _core.judge_documents(chain(spec, "web"), [t for *_, t in docs])
    expected = [(src, row, v[0], v[1]) for (src, row, _), v in zip(docs, verdicts) if v]
    mix = tinyllama.Mix(out)
    report = mix.filter_report("web")
    got = list(zip(report["source"], report["row"], report["filter"], report["reason"]))
    assert got == expected
    by_filter = Counter(f for _, _, f, _ in expected)
    info = mix.inspect()["corpora"]["web"]
    assert info["filters"] == {name: by_filter.get(name, 0) for name in [*WEB_FILTERS, "decontaminate"]}
    # every filter had work on the real slice (and the planted documents)
    assert all(by_filter[name] > 0 for name in ("language", "gopher_quality", "decontaminate")), by_filter
    github = sum(r["meta"]["redpajama_set_name"] == "RedPajamaGithub"
                 for f in sorted((CORPORA / "slimpajama").rglob("*.jsonl.zst")) for r in read_rows(f))
    assert info["docs_filtered"] == github + len(expected)
    assert info["docs_read"] == len(docs) + github
    assert info["docs_kept"] == len(docs) - len(expected) - info["exact_duplicates"] - info["near_duplicates"]
    # per file too
    manifest = json.loads((out / "corpora/web/manifest.json").read_text())
    per_file = Counter()
    for f in manifest["files"]:
        per_file.update(f.get("filtered_by", {}))
    assert per_file == by_filter
    # filters run before dedup: no dropped document is anyone's kept original
    dropped = {(s, r) for s, r, *_ in expected}
    dups = mix.dedup_report("web")
    assert not dropped & set(zip(dups["kept_source"], dups["kept_row"]))
    assert not dropped & set(zip(dups["source"], dups["row"]))


def test_decontamination_rows_name_the_task_and_item(built):
    spec, out = built
    report = tinyllama.Mix(out).filter_report("web")
    planted = report.filter(report["source"] == "planted.jsonl")
    # the four planted items (verbatim and mangled) go, naming their items; the short phrase stays
    assert sorted(planted["row"].to_list()) == [0, 1, 2, 3]
    items = [it for it in read_rows(TASK)]
    english = [i for i, it in enumerate(items) if it["corpus"] == "slimpajama"]
    for row, task, item, flt in zip(planted["row"], planted["task"], planted["item"], planted["filter"]):
        assert (flt, task, item) == ("decontaminate", "continuation", english[row])
    real = report.filter((report["filter"] == "decontaminate") & (report["source"] != "planted.jsonl"))
    assert real.height > 0 and real["task"].to_list() == ["continuation"] * real.height
    zh = tinyllama.Mix(out).filter_report("zh")
    assert (zh["filter"] == "decontaminate").sum() > 0  # the Chinese items were cut from skypile
    assert set(zh["filter"]) <= {"language", "decontaminate"}


def test_the_lock_records_the_resolved_settings_and_stays_relocatable(built, tmp_path):
    spec, out = built
    lock = json.loads((out / "mix.json").read_text())
    web = lock["filters"]["corpora"]["web"]
    assert [f["name"] for f in web] == [*WEB_FILTERS, "decontaminate"]
    assert web[0]["settings"] == {"keep": ["en"], "min_score": 0.5}
    assert len(web[1]["settings"]) > 3  # defaults filled in
    # which spaCy rules split the words is part of what ran
    assert web[1]["settings"]["word_rules"] == word_rules.ensure()
    assert lock["filters"]["decontaminate"] == web[-1]["settings"]
    assert "corpora/web/filter_report.parquet" in lock["sha256"]
    assert tinyllama.Mix(out).inspect()["filters"] == lock["filters"]
    # the same spec in another folder: the same bytes, no path recorded
    other = tmp_path / "elsewhere"
    other.mkdir()
    spec2 = make_spec(other)
    build_mix(spec2, other / "mix", workers=1, progress=False, in_flight_docs=7)
    assert tree_bytes(other / "mix") == tree_bytes(out)
    assert not any(str(spec.parent).encode() in b for b in tree_bytes(out).values())


def test_changing_a_setting_changes_the_identity(built, tmp_path):
    spec, out = built
    changed = make_spec(tmp_path, {**WEB_FILTERS, "gopher_repetition": {"dup_line_frac": 0.2}})
    a = json.loads((out / "mix.json").read_text())["identity"]
    build_mix(changed, tmp_path / "mix", workers=2, progress=False)
    assert json.loads((tmp_path / "mix" / "mix.json").read_text())["identity"] != a


@pytest.mark.parametrize("body,message", [
    ("c4 = { typo = 1 }", "corpora.web.filters.c4.typo"),
    ("language = { keep = 3 }", "corpora.web.filters.language.keep"),
    ("nope = {}", "key 'corpora.web.filters.nope': unknown filter"),
    ("decontaminate = {}", "top-level [decontaminate]"),
])
def test_bad_filter_settings_are_one_line_naming_the_key(tmp_path, body, message):
    spec = make_spec(tmp_path, {})
    spec.write_text(spec.read_text().replace("[corpora.web.filters]\n", f"[corpora.web.filters]\n{body}\n"))
    with pytest.raises(SpecError, match=re.escape(message)) as e:
        load_spec(spec)
    assert "\n" not in str(e.value)


def test_a_missing_benchmark_file_is_named(tmp_path):
    spec = make_spec(tmp_path)
    spec.write_text(spec.read_text().replace('paths = ["tasks/*.jsonl"]', 'paths = ["tasks/missing.jsonl"]'))
    with pytest.raises(SpecError, match="missing.jsonl"):
        build_mix(spec, tmp_path / "mix", workers=1, progress=False)


def test_inspect_shows_the_counts_per_filter(built):
    from typer.testing import CliRunner

    from tinyllama.cli import app

    _, out = built
    result = CliRunner().invoke(app, ["mix", "inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "dropped by filter" in result.output and "gopher_quality" in result.output


def test_killed_and_rerun_give_the_same_bytes(built, tmp_path):
    """With filters and decontamination: killed after a staged part (its filter decisions with
    it), after a shard and before mix.json, each run resuming the one before."""
    spec, out = built
    build_aborted_at(spec, tmp_path / "mix", ["part:1", "shard:1", "lock:1"])
    assert tree_bytes(tmp_path / "mix") == tree_bytes(out)
