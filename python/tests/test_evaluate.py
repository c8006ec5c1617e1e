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
