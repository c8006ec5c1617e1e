"""`tinyllama eval --tasks` through lm-evaluation-harness, offline, on a task built from the slice.

The task (python/tests/data/harness/: continuation.yaml + continuation.jsonl, made by
make_task.py) is in lm_eval's local-file format: given the start of a held-out document
(English or Chinese web text), pick its next few tokens against those of a document of the
other corpus. Items come in pairs sharing their two choices, so any scorer that ignores the
context is right exactly 1/2 of the time; a tiny model briefly trained on the mix's training
documents (never the task's) reads the context. The published-table comparison and the
missing-file errors need no model.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HARNESS = Path(__file__).parent / "data" / "harness"
sys.path.insert(0, str(HARNESS))

import make_task  # noqa: E402

MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "intermediate_size": 176, "vocab_size": 32000,
         "max_seq_len": 64}


def needs_lm_eval():
    return pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (the `eval` extra)")


# ---- the task and the models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def task_mix(tmp_path_factory) -> Path:
    return make_task.build_task_mix(tmp_path_factory.mktemp("harness-mix"))


def train_model(mix_dir: Path, steps: int, seed: int = 11, lr: float = 1e-2):
    """A few-line causal-LM loop over the mix's training documents (held-out ones excluded)."""
    import numpy as np
    import torch.nn.functional as F

    import tinyllama
    from tinyllama.model import ModelConfig, build_model

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    mix = tinyllama.Mix(mix_dir)
    model = build_model(ModelConfig(**MODEL), seed=seed)
    L = MODEL["max_seq_len"]
    windows = []
    for c in mix.corpora:
        stream = np.concatenate([d.astype(np.int64) for d in mix.documents(c)])
        n = (len(stream) - 1) // L
        windows.append(torch.from_numpy(stream[: n * L + 1]).unfold(0, L + 1, L))
    data = torch.cat(windows)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (8,), generator=g)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_hf(task_mix, tmp_path_factory) -> Path:
    needs_lm_eval()  # before training: skip fast
    from tinyllama.hf import save_hf

    model = train_model(task_mix, steps=250)
    return save_hf(model, tmp_path_factory.mktemp("trained") / "hf", task_mix / "tokenizer.json")


@pytest.fixture(scope="module")
def untrained_hf(task_mix, tmp_path_factory) -> Path:
    needs_lm_eval()
    from tinyllama.hf import save_hf
    from tinyllama.model import ModelConfig, build_model

    model = build_model(ModelConfig(**MODEL), seed=11)
    return save_hf(model, tmp_path_factory.mktemp("untrained") / "hf", task_mix / "tokenizer.json")


def test_committed_task_is_the_slice_rebuilt(task_mix, tmp_path):
    """continuation.jsonl is exactly what make_task.py makes from the slice's held-out docs."""
    rows = make_task.items(task_mix)
    make_task.write_jsonl(rows, tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_bytes() == (HARNESS / "continuation.jsonl").read_bytes()
    assert len(rows) >= 80 and len(rows) % 2 == 0
    # Chance is exactly 1/2 for a scorer that ignores the context: each pair shares its choices
    # and has both answers.
    for i in range(0, len(rows), 2):
        a, b = rows[i : i + 2]
        assert a["choices"] == b["choices"] and {a["label"], b["label"]} == {0, 1}
        assert a["context"] != b["context"]


# ---- lm_eval on the trained / untrained model ----------------------------------------------------


def run(hf_dir: Path, **kw) -> dict:
    from tinyllama.eval.harness import run_harness

    return run_harness(hf_dir, ["tinyllama_continuation"], include_path=HARNESS, batch_size=16, **kw)


def test_trained_model_beats_chance_untrained_does_not(trained_hf, untrained_hf, tmp_path):
    needs_lm_eval()
    out = tmp_path / "rows.jsonl"
    trained = run(trained_hf, out=out)
    untrained = run(untrained_hf, out=out)
    t = trained["tasks"]["tinyllama_continuation"]
    u = untrained["tasks"]["tinyllama_continuation"]
    assert t["metric"] == u["metric"] == "acc"  # the task's own metric list
    print(f"trained {t['value']:.2f}%  untrained {u['value']:.2f}%  (chance 50%)")
    # ~96 items: 65% is ~3 standard deviations above chance; measured 73.96% (untrained 52.08%) after 250 steps.
    assert t["value"] >= 65.0, t
    assert 40.0 <= u["value"] <= 60.0, u
    assert trained["average"] == t["value"] and trained["tokens"] is None  # an HF dir: no trainer.json
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["tasks"]["tinyllama_continuation"]["value"] for r in rows] == [t["value"], u["value"]]


def test_checkpoint_is_exported_and_tokens_recorded(task_mix, tmp_path):
    """A training checkpoint (step-N/ with trainer.json) is exported on the fly; the row carries
    the tokens it was trained on; `--limit` is passed through; the CSV row has one column per task."""
    needs_lm_eval()
    from test_hf import train_config

    from tinyllama.eval.harness import read_rows, run_harness
    from tinyllama.train import train

    torch.set_num_threads(1)
    train(train_config(task_mix, tmp_path / "run", steps=2))
    trainer = json.loads((tmp_path / "run/checkpoints/step-2/trainer.json").read_text())
    out = tmp_path / "rows.csv"
    row = run_harness(tmp_path / "run", ["tinyllama_continuation"], include_path=HARNESS, limit=6, out=out)
    assert row["tokens"] == trainer["tokens"] > 0
    assert row["model"] == "step-2"
    assert row["limit"] == 6
    with open(out, newline="") as f:
        recs = list(csv.DictReader(f))
    assert recs[0]["tinyllama_continuation_metric"] == "acc"
    assert float(recs[0]["tinyllama_continuation"]) == row["tasks"]["tinyllama_continuation"]["value"]
    assert read_rows(out)[0]["tokens"] == row["tokens"]


# ---- published rows, comparison, table, plot --------------------------------------------------


def test_published_rows_are_the_model_cards():
    from tinyllama.eval.harness import CARD_TASKS, published_rows

    rows = {r["model"]: r for r in published_rows()}
    v11 = rows["TinyLlama-1.1B-v1.1"]
    assert v11["tokens"] == 2 * 10**12 and set(v11["tasks"]) == set(CARD_TASKS)
    # The shipped averages are the cards' own; they agree with the seven columns' mean.
    for name in ("TinyLlama-1.1B-v1.1", "TinyLlama-1.1B-v1_math_code", "TinyLlama-1.1B-v1.1_chinese"):
        r = rows[name]
        assert r["average"] == pytest.approx(sum(r["tasks"].values()) / 7, abs=0.006), name


def test_comparison_is_computed_from_the_shipped_numbers():
    from tinyllama.eval.harness import CARD_TASKS, compare, format_table, published_rows

    pub = published_rows()
    v11 = next(r for r in pub if r["model"] == "TinyLlama-1.1B-v1.1")
    # A row 1.5 points above v1.1 on every task but boolq (not run).
    tasks = {t: {"metric": m, "value": round(v11["tasks"][t] + 1.5, 2), "stderr": None}
             for t, (_, m) in CARD_TASKS.items() if t != "boolq"}
    row = {"model": "ours", "path": "x", "tokens": 10**9, "limit": None, "tasks": tasks, "average": None}
    comps = {c["model"]: c for c in compare(row, pub)}
    c = comps["TinyLlama-1.1B-v1.1"]
    assert set(c["tasks"]) == set(tasks)
    assert all(d == pytest.approx(1.5) for d in c["tasks"].values())
    assert c["average"] == pytest.approx(1.5)
    chinese = next(r for r in pub if r["model"] == "TinyLlama-1.1B-v1.1_chinese")
    assert comps["TinyLlama-1.1B-v1.1_chinese"]["tasks"]["hellaswag"] == pytest.approx(
        v11["tasks"]["hellaswag"] + 1.5 - chinese["tasks"]["hellaswag"])
    only = compare(row, pub, models=["Pythia-1.0B"])
    assert [c["model"] for c in only] == ["Pythia-1.0B"]
    table = format_table(row, only)
    assert "HellaSwag" in table and "vs Pythia-1.0B" in table and "+" in table


def test_plot_series(tmp_path):
    from tinyllama.eval.harness import plot_series, published_rows

    rows = [{"model": f"step-{i}", "path": "", "tokens": 10**6 * i, "limit": None, "average": 30.0 + i,
             "tasks": {"piqa": {"metric": "acc_norm", "value": 50.0 + i, "stderr": None}}} for i in (1, 2, 4)]
    png = plot_series(rows, tmp_path / "acc.png", published_rows())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- offline data: local copies, missing files ------------------------------------------------


def test_missing_dataset_file_is_named_before_anything_runs(tmp_path):
    needs_lm_eval()
    from tinyllama.errors import InputError, SpecError
    from tinyllama.eval.harness import run_harness

    # Not even a model is needed: the data is checked first.
    (tmp_path / "data/hellaswag").mkdir(parents=True)
    with pytest.raises(InputError, match=r"data/piqa/validation\.jsonl.*not found"):
        run_harness(tmp_path / "nomodel", ["piqa"], data_dir=tmp_path / "data")
    with pytest.raises(InputError, match=r"arc_easy/test\.jsonl.*'arc_easy'"):
        run_harness(tmp_path / "nomodel", ["arc_easy"], data_dir=tmp_path / "data")
    with pytest.raises(SpecError, match="--data-dir"):
        run_harness(tmp_path / "nomodel", ["hellaswag"])
    # A user task YAML whose data file is gone.
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "t.yaml").write_text((HARNESS / "continuation.yaml").read_text())
    with pytest.raises(InputError, match=r"inc/continuation\.jsonl: dataset file for task 'tinyllama_continuation'"):
        run_harness(tmp_path / "nomodel", ["tinyllama_continuation"], include_path=inc)


def test_card_tasks_read_local_copies(tmp_path):
    """The seven model-card tasks are lm_eval's own YAMLs re-pointed at `data_dir/<task>/<split>`:
    lm_eval builds its prompts from local files in each dataset's schema, offline. (The rows are
    made from slice text in the schemas: this checks the plumbing, not the benchmarks.)"""
    needs_lm_eval()
    from lm_eval.tasks import TaskManager

    from tinyllama.eval.harness import CARD_TASKS, _offline, prepare_tasks

    lines = [r["context"] for r in map(json.loads, (HARNESS / "continuation.jsonl").read_text().splitlines())]
    a, b, c = lines[0], lines[3], lines[6]
    schema = {
        "hellaswag/validation": {"ind": 0, "activity_label": "Docs", "ctx_a": a, "ctx_b": "", "ctx": a,
                                 "endings": [b, c, a, b], "source_id": "x", "split": "val", "split_type": "indomain",
                                 "label": "1"},
        "openbookqa/test": {"id": "1", "question_stem": a, "choices": {"text": [b, c, a, b], "label": list("ABCD")},
                            "answerKey": "C"},
        "winogrande/validation": {"sentence": "The _ went on.", "option1": b[:20], "option2": c[:20], "answer": "2"},
        "arc_challenge/test": {"id": "1", "question": a, "choices": {"text": [b, c], "label": ["A", "B"]},
                               "answerKey": "B"},
        "arc_easy/test": {"id": "1", "question": a, "choices": {"text": [b, c], "label": ["A", "B"]},
                          "answerKey": "A"},
        "boolq/validation": {"question": a, "passage": b, "idx": 0, "label": 1},
        "piqa/validation": {"goal": a, "sol1": b, "sol2": c, "label": 0},
    }
    data = tmp_path / "data"
    for rel, rec in schema.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / f"{rel}.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    (tmp_path / "t").mkdir()
    task_dir = prepare_tasks(list(CARD_TASKS), data, None, tmp_path / "t")
    with _offline():
        loaded = TaskManager(include_path=[str(task_dir)]).load_task_or_group(list(CARD_TASKS))
        for name, task in loaded.items():
            docs = list(task.eval_docs)
            assert len(docs) == 2, name
            assert task.doc_to_choice(docs[0]), name
