"""Spec parsing and validation: every mistake gives an error naming the key."""

from __future__ import annotations

import pytest
from conftest import STAGES, write_spec

from tinyllama.data.spec import load_spec, parse_count
from tinyllama.errors import SpecError


def test_counts_take_decimal_suffixes():
    assert parse_count("1.5T", "k") == 1_500_000_000_000
    assert parse_count("350B", "k") == 350_000_000_000
    assert parse_count("1.8M", "k") == 1_800_000
    assert parse_count("2K", "k") == 2000
    assert parse_count(2048, "k") == 2048
    with pytest.raises(SpecError, match="stages.0.tokens"):
        parse_count("lots", "stages.0.tokens")


def test_reference_spec_parses(spec_file):
    spec = load_spec(spec_file)
    assert list(spec.corpora) == ["slimpajama", "skypile", "starcoder"]
    assert spec.corpora["slimpajama"].exclude == {"meta.redpajama_set_name": ["RedPajamaGithub"]}
    assert spec.corpora["starcoder"].text == "content"
    assert [s.tokens for s in spec.stages] == [200_000, 100_000]
    assert spec.stages[1].ramp_tokens == 40_000
    assert (spec.dedup.ngram, spec.dedup.permutations, spec.dedup.bands, spec.dedup.rows) == (13, 128, 9, 13)
    cfg = spec.build_config(out=spec_file.parent / "out", workers=2)
    assert cfg["workers"] == 2
    assert cfg["corpora"][0]["exclude"] == [("meta.redpajama_set_name", ["RedPajamaGithub"])]
    assert cfg["stages"][1]["weights"] == {"slimpajama": 0.5, "skypile": 0.3, "starcoder": 0.2}


@pytest.mark.parametrize(
    "stages, message",
    [
        (STAGES.replace("slimpajama = 0.5", "slimpajama = 0.4"), r"stages\[1\]\.weights': sum to 0\.9"),
        (STAGES.replace("starcoder = 0.2", "starcoderr = 0.2"),
         r"stages\[1\]\.weights\.starcoderr': unknown corpus"),
        (STAGES.replace('batch_tokens = "4K"', 'batch_tokens = "100"', 1),
         r"stages\[0\]\.batch_tokens': 100 is smaller"),
        (STAGES.replace('name = "basic"', 'name = "basic"\nramp_tokens = "1K"'), r"stages\[0\]\.ramp_tokens"),
        (STAGES.replace('name = "continual"', 'name = "basic"'),
         r"stages\[1\]\.name': stage name 'basic' is used twice"),
        (STAGES.replace('ramp_tokens = "40K"', 'ramp_tokens = "400K"'), r"stages\[1\]\.ramp_tokens': 400000 is longer"),
        ("", r"key 'stages': at least one"),
    ],
)
def test_bad_stages_name_the_key(tmp_path, stages, message):
    spec = write_spec(tmp_path, stages=stages)
    with pytest.raises(SpecError, match=message) as err:
        load_spec(spec)
    assert str(spec) in str(err.value)


def test_unknown_key_suggests_the_right_one(tmp_path):
    spec = write_spec(tmp_path, corpora='[corpora.skypile]\npaths = ["x/*.jsonl"]\ndedupe = "near"\n',
                      stages=STAGES.replace(", starcoder = 0.2", "").replace("slimpajama = 0.5", "slimpajama = 0.7")
                      .replace("weights = { slimpajama = 1.0 }", "weights = { skypile = 1.0 }"))
    with pytest.raises(SpecError, match=r"corpora\.skypile\.dedupe': unknown key; did you mean 'dedup'"):
        load_spec(spec)


def test_bad_choices_and_types(tmp_path):
    bad = write_spec(tmp_path, corpora='[corpora.slimpajama]\npaths = ["x"]\non_error = "ignore"\n',
                     stages='[[stages]]\ntokens = "1M"\nbatch_tokens = "4K"\nweights = { slimpajama = 1.0 }\n')
    with pytest.raises(SpecError, match=r"corpora\.slimpajama\.on_error': must be one of fail, skip"):
        load_spec(bad)
    bad.write_text(bad.read_text().replace('on_error = "ignore"', "holdout_docs = \"ten\""))
    with pytest.raises(SpecError, match=r"corpora\.slimpajama\.holdout_docs': expected int"):
        load_spec(bad)


def test_dedup_table_is_validated(tmp_path):
    spec = write_spec(tmp_path, body="\n[dedup]\nbands = 20\nrows = 13\n")
    with pytest.raises(SpecError, match=r"dedup\.bands': bands x rows = 260 exceeds permutations = 128"):
        load_spec(spec)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [unclosed\n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(broken)


@pytest.mark.parametrize("example", ["demo", "v1.1", "math_code", "chinese"])
def test_shipped_examples_parse(example):
    from pathlib import Path

    spec = load_spec(Path(__file__).parents[2] / "examples" / f"{example}.toml")
    assert spec.stages and spec.corpora
    if example != "demo":  # the recipe: 1.5T + 350B + 150B = 2T tokens, cooldown at 4x the batch
        assert sum(s.tokens for s in spec.stages) == 2 * 10**12
        assert spec.stages[2].batch_tokens == 4 * spec.stages[1].batch_tokens


@pytest.mark.parametrize("example", ["tinyllama-v1.1-family", "demo"])
def test_shipped_families_are_the_model_cards_variants(example):
    from pathlib import Path

    spec = load_spec(Path(__file__).parents[2] / "examples" / f"{example}.toml")
    assert sorted(spec.branches) == ["chinese", "math_code", "v1_1"]
    assert [s.weights for s in spec.stages] == [{"slimpajama": 1.0}]
    want = {"v1_1": {"slimpajama": 1.0}, "math_code": {"slimpajama": 0.75, "starcoder": 0.15, "proofpile": 0.10},
            "chinese": {"slimpajama": 0.5, "skypile": 0.5}}
    for name, stages in spec.branches.items():
        assert [s.weights for s in stages] == [want[name]] * 2, name
        assert stages[1].batch_tokens == 4 * stages[0].batch_tokens, name
        if example != "demo":  # 1.5T trunk + 350B + 150B = 2T tokens per variant
            assert spec.stages[0].tokens + sum(s.tokens for s in stages) == 2 * 10**12
            # and each variant's own spec is that branch, whole
            alone = load_spec(Path(__file__).parents[2] / "examples" / f"{name.replace('_1', '.1')}.toml")
            assert [(s.tokens, s.batch_tokens, s.weights) for s in alone.stages] == [
                (s.tokens, s.batch_tokens, s.weights) for s in spec.stages + stages]
