"""Held-out perplexity: a briefly trained model beats an untrained one on every corpus; the
numbers equal a direct computation with `transformers` on the same windows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import test_hf
from test_hf import MODEL

# The shared fixtures (a mix over the slice, a briefly trained run, its export).
exported, tiny_mix, tiny_run = test_hf.exported, test_hf.tiny_mix, test_hf.tiny_run


def test_trained_beats_untrained(tiny_run, tiny_mix):
    import tinyllama
    from tinyllama.eval.perplexity import evaluate, format_table
    from tinyllama.hf import load_model
    from tinyllama.model import ModelConfig, build_model

    mix = tinyllama.Mix(tiny_mix)
    trained = evaluate(load_model(tiny_run), mix)
    untrained = evaluate(build_model(ModelConfig(**MODEL)).eval(), mix)
    assert set(trained["corpora"]) == {"slimpajama", "skypile"}
    for name in trained["corpora"]:
        t, u = trained["corpora"][name], untrained["corpora"][name]
        assert t["docs"] == u["docs"] == 10
        # every token after each document's first is predicted once
        assert t["tokens"] == sum(len(d) - 1 for d in mix.documents(name, holdout=True))
        assert u["perplexity"] > 10_000  # ~ uniform over 32000 at init
        assert t["perplexity"] < 0.5 * u["perplexity"], (name, t, u)
    assert trained["all"]["perplexity"] < untrained["all"]["perplexity"]
    table = format_table(trained)
    assert "slimpajama" in table and "skypile" in table and "all" in table


def test_matches_a_direct_computation(exported, tiny_mix):
    """Same windows scored by transformers' LlamaForCausalLM (its own loss)."""
    transformers = pytest.importorskip("transformers")

    import tinyllama
    from tinyllama.eval.perplexity import evaluate
    from tinyllama.hf import load_model

    mix = tinyllama.Mix(tiny_mix)
    got = evaluate(load_model(exported), mix, corpora=["slimpajama"], seq_len=32, max_docs=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True, dtype=torch.float32)
    nll, n = 0.0, 0
    for doc in list(mix.documents("slimpajama", holdout=True))[:3]:
        ids = torch.from_numpy(doc.astype(np.int64))
        for s in range(0, len(ids) - 1, 32):
            w = ids[s : s + 33][None]
            with torch.no_grad():
                loss = hf(input_ids=w, labels=w).loss  # mean over w.shape[1] - 1 predictions
            nll += float(loss) * (w.shape[1] - 1)
            n += w.shape[1] - 1
    r = got["corpora"]["slimpajama"]
    assert r["tokens"] == n and r["docs"] == 3
    assert r["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_eval_main_json_and_errors(exported, tiny_mix):
    from tinyllama.errors import SpecError
    from tinyllama.eval.perplexity import eval_main

    out = json.loads(eval_main(exported, tiny_mix, as_json=True))
    assert out["seq_len"] == 64 and out["all"]["tokens"] > 0
    with pytest.raises(SpecError, match="seq-len"):
        eval_main(exported, tiny_mix, seq_len=65)
    with pytest.raises(SpecError, match="no such corpus"):
        eval_main(exported, tiny_mix, corpora=["nope"])


def _cli(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tinyllama.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_several_runs_one_table_one_json_document_and_the_out_file(tiny_run, exported, tiny_mix, tmp_path):
    """`tinyllama eval RUN HF --mix DIR --out FILE.csv`: one table, a row per run named by its
    path and step, `all` said to be token-weighted and an unweighted `mean`; the CSV written
    (a row per run); `--json` one document naming each run's path."""
    import csv

    from tinyllama.eval.perplexity import evaluate
    from tinyllama.hf import load_model

    out = tmp_path / "ppl.csv"
    r = _cli("eval", str(tiny_run), str(exported), "--mix", str(tiny_mix), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert sum(ln.startswith("held-out loss and perplexity") for ln in lines) == 1  # one table, not one per run
    assert "token-weighted" in r.stdout and "mean (unweighted)" in r.stdout
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split() and ln.split()[0] in (str(tiny_run), str(exported))}
    assert set(rows) == {str(tiny_run), str(exported)}
    assert rows[str(tiny_run)][1] == "8" and rows[str(exported)][1] == "-"  # the checkpoint's step; none for HF

    direct = evaluate(load_model(tiny_run), tiny_mix)
    c = direct["corpora"]
    weighted = sum(v["nll"] * v["tokens"] for v in c.values()) / sum(v["tokens"] for v in c.values())
    assert direct["all"]["nll"] == pytest.approx(weighted, rel=1e-9)
    assert direct["mean"]["nll"] == pytest.approx(sum(v["nll"] for v in c.values()) / len(c), rel=1e-9)
    assert direct["mean"]["nll"] != pytest.approx(direct["all"]["nll"], rel=1e-3)  # the two differ here

    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert [w["path"] for w in written] == [str(tiny_run), str(exported)]
    assert written[0]["step"] == "8" and written[1]["step"] == ""
    for w in written:
        assert float(w["slimpajama_loss"]) == pytest.approx(c["slimpajama"]["nll"], rel=1e-5)
        assert float(w["mean_loss"]) == pytest.approx(direct["mean"]["nll"], rel=1e-5)
        assert float(w["all_loss"]) == pytest.approx(direct["all"]["nll"], rel=1e-5)

    r = _cli("eval", str(tiny_run), str(exported), "--mix", str(tiny_mix), "--json", "--corpus", "skypile")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # one document, not concatenated objects
    assert [d["path"] for d in doc] == [str(tiny_run), str(exported)]
    assert doc[0]["step"] == 8 and set(doc[0]["corpora"]) == {"skypile"}
    assert doc[0]["corpora"]["skypile"]["nll"] == pytest.approx(c["skypile"]["nll"], rel=1e-5)


def test_eval_refuses_what_it_would_silently_drop(tiny_run, tiny_mix, tmp_path):
    """A second --mix, --out with both --mix and --tasks, and an --out CSV of other columns:
    one line each, nothing written."""

    def one_line(r) -> str:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
        return lines[0]

    other = tmp_path / "other-mix"
    assert "--mix given 2 times" in one_line(_cli("eval", str(tiny_run), "--mix", str(tiny_mix), "--mix", str(other)))
    out = tmp_path / "x.csv"
    assert "--out" in one_line(_cli("eval", str(tiny_run), "--mix", str(tiny_mix), "--tasks", "piqa", "--out",
                                     str(out)))
    assert not out.exists()
    out.write_text("path,step,hellaswag\n")
    assert "x.csv" in one_line(_cli("eval", str(tiny_run), "--mix", str(tiny_mix), "--out", str(out)))
    assert out.read_text() == "path,step,hellaswag\n"
