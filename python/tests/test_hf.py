"""Hugging Face interop on real data: a tiny model trained on a mix built from the slice is
exported, loaded by real `transformers` offline (fp32 logits and tokenizer compared with ours),
imported back (bit-exact) and resumed by the trainer.

The helpers at the top (`tiny_mix`, `train_tiny`) are shared by test_generate / test_evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import CORPORA, write_spec
from test_train import TokenStreamSource

import tinyllama
from tinyllama.errors import CheckpointError

SEQ_LEN = 64
MODEL = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_kv_head": 2,
    "intermediate_size": 176,
    "vocab_size": 32000,
    "max_seq_len": SEQ_LEN,
}


def build_tiny_mix(out: Path) -> Path:
    """A two-corpus mix over the slice (SlimPajama + SkyPile), 10 held-out docs each."""
    from tinyllama.data.build import build_mix

    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
    dedup = "none"
    holdout_docs = 10

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    dedup = "none"
    holdout_docs = 10
    """
    stages = """
    [[stages]]
    name = "basic"
    tokens = "100K"
    batch_tokens = "4K"
    weights = { slimpajama = 0.5, skypile = 0.5 }
    """
    out.mkdir(parents=True, exist_ok=True)
    spec = write_spec(out, corpora=corpora, stages=stages)
    build_mix(spec, out / "mix", 1)
    return out / "mix"


def mix_source(mix_dir: Path) -> TokenStreamSource:
    """Training windows over the mix's kept (not held-out) documents, per corpus."""

    mix = tinyllama.Mix(mix_dir)
    streams = {c: np.concatenate([d.astype(np.int64) for d in mix.documents(c)]) for c in mix.corpora}
    return TokenStreamSource(streams, seq_len=SEQ_LEN)


def train_config(mix_dir: Path, out: Path, steps: int, **run):
    from tinyllama.train.config import config_from_dict

    raw = {
        "mix": str(mix_dir),
        "out": str(out),
        "micro_batch": 4,
        "model": dict(MODEL),
        "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2},
        "run": {"max_steps": steps, "log_every": 1, "save_every": 0, "precision": "fp32", "compile": False, **run},
    }
    return config_from_dict(raw)


def train_tiny(mix_dir: Path, out: Path, steps: int) -> Path:
    """A briefly trained tiny model; returns the run dir (checkpoints/step-{steps}/)."""
    from tinyllama.train import train

    torch.set_num_threads(1)
    train(train_config(mix_dir, out, steps), source=mix_source(mix_dir))
    return out


@pytest.fixture(scope="session")
def tiny_mix(tmp_path_factory) -> Path:
    return build_tiny_mix(tmp_path_factory.mktemp("mix"))


@pytest.fixture(scope="session")
def tiny_run(tiny_mix, tmp_path_factory) -> Path:
    return train_tiny(tiny_mix, tmp_path_factory.mktemp("run") / "run", steps=8)


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory) -> Path:
    from tinyllama.hf import export

    return export(tiny_run, tmp_path_factory.mktemp("hf") / "hf")


@pytest.fixture(scope="session")
def random_hf(tiny_mix, tmp_path_factory) -> Path:
    """An untrained tiny model in the HF layout (its greedy output is varied, unlike a model
    trained for a few steps, which repeats its most frequent token)."""
    from tinyllama.hf import save_hf
    from tinyllama.model import ModelConfig, build_model

    model = build_model(ModelConfig(**MODEL), seed=11)
    return save_hf(model, tmp_path_factory.mktemp("random") / "hf", tiny_mix / "tokenizer.json")


def heldout_ids(mix_dir: Path, n: int = 2, length: int = SEQ_LEN) -> torch.Tensor:

    mix = tinyllama.Mix(mix_dir)
    docs = [d for d in mix.documents("slimpajama", holdout=True) if len(d) >= length][:n]
    return torch.from_numpy(np.stack([d[:length].astype(np.int64) for d in docs]))


def slice_texts() -> list[str]:
    import io

    import zstandard

    path = CORPORA / "slimpajama/train/chunk1/example_train_0000.jsonl.zst"
    with open(path, "rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8").read()
    texts = [json.loads(ln)["text"] for ln in lines.splitlines()[:40]]
    texts += [json.loads(ln)["text"] for ln in (CORPORA / "skypile/2023-01.jsonl").read_text().splitlines()[:20]]
    return texts + ["", " ", "Hello  world\n\n  x", "<s> literal specials </s>"]


# ---- export -------------------------------------------------------------------------------------


def test_export_layout_and_config(exported, tiny_run):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    want = {"hidden_size": 64, "intermediate_size": 176, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "vocab_size": 32000, "max_position_embeddings": SEQ_LEN,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "torch_dtype": "float32"}
    assert {k: cfg[k] for k in want} == want
    tc = json.loads((exported / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"  # tokenizer.json as written
    # The exported tokenizer is the mix's, byte for byte.
    trainer = json.loads((tiny_run / "checkpoints/step-8/trainer.json").read_text())
    mix_tok = Path(trainer["config"]["mix"]) / "tokenizer.json"
    assert (exported / "tokenizer.json").read_bytes() == mix_tok.read_bytes()


def test_transformers_logits_equal_ours(exported, tiny_run, tiny_mix):
    from tinyllama.hf import load_model

    ours = load_model(tiny_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True, dtype=torch.float32)
    hf.eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = heldout_ids(tiny_mix)
    with torch.no_grad():
        a = ours(ids)
        b = hf(input_ids=ids).logits
    assert a.shape == b.shape == (ids.shape[0], SEQ_LEN, 32000)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    # The model is not trivially uniform: the check above is about real, distinct logits.
    assert a.std() > 0.1


def test_transformers_tokenizer_offline_matches_ours(exported):

    hf_tok = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    ours = tinyllama.Tokenizer(exported / "tokenizer.json")
    texts = slice_texts()
    ref = ours.encode_batch(texts, add_special_tokens=False)
    for text, ids in zip(texts, ref):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids.tolist(), text[:80]
        # With specials, HF prepends BOS (Llama 2) and adds no EOS.
        assert hf_tok(text)["input_ids"] == [1] + ids.tolist()
    assert hf_tok.bos_token_id == 1 and hf_tok.eos_token_id == 2


def generate_warnings(hf_dir: Path) -> list[str]:
    """What transformers warns (logger or `warnings`) while generating with `max_new_tokens`."""
    import logging
    import warnings

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.eval().generate(**tok("The history of", return_tensors="pt"), max_new_tokens=3,
                                        do_sample=False)
    finally:
        logger.removeHandler(handler)
    assert out.shape[1] <= len(tok("The history of")["input_ids"]) + 3
    return [r.getMessage() for r in records] + [str(w.message) for w in caught]


def test_generate_with_max_new_tokens_does_not_warn_about_max_length(exported, tmp_path):
    """The exported generation_config.json sets no `max_length`, so transformers does not warn
    "Both `max_new_tokens` and `max_length` seem to have been set" on every `generate`."""
    import shutil

    gen = json.loads((exported / "generation_config.json").read_text())
    assert "max_length" not in gen and (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)
    assert not [m for m in generate_warnings(exported) if "max_length" in m]
    # The check can fail: with the max_length the export used to write, transformers warns.
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    (old / "generation_config.json").write_text(json.dumps({**gen, "max_length": SEQ_LEN}))
    assert [m for m in generate_warnings(old) if "max_length" in m]


def test_export_needs_a_tokenizer(tiny_run, tmp_path):
    import shutil

    from tinyllama.errors import InputError
    from tinyllama.hf import export

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    step = run / "checkpoints/step-8"
    t = json.loads((step / "trainer.json").read_text())
    t["config"]["mix"] = str(tmp_path / "gone")
    (step / "trainer.json").write_text(json.dumps(t))
    with pytest.raises(InputError, match="--tokenizer"):
        export(run, tmp_path / "hf")
    tok = Path(tiny_run.parent.parent) / "nonexistent"
    with pytest.raises(InputError, match="not found"):
        export(run, tmp_path / "hf", tokenizer=tok)


# ---- import ------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(exported, tiny_run, tmp_path):
    from tinyllama.hf import import_hf, load_model

    step_dir = import_hf(exported, tmp_path / "imported", step=8)
    assert step_dir == tmp_path / "imported/checkpoints/step-8"
    a = load_model(tiny_run).state_dict()
    b = load_model(step_dir).state_dict()
    c = load_model(exported).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], c[k]), k


def test_imported_checkpoint_resumes_in_the_trainer(exported, tiny_mix, tmp_path):
    """import-hf at step 5, then `train --resume`: it continues at step 5 from the imported
    weights (the first logged loss is the imported model's loss on step 5's batch)."""
    import torch.nn.functional as F

    from tinyllama.hf import import_hf, load_model
    from tinyllama.train import train

    run = tmp_path / "run"
    import_hf(exported, run, step=5)
    source = mix_source(tiny_mix)
    tokens, _ = source.batch(5)
    x = torch.from_numpy(tokens)
    with torch.no_grad():
        logits = load_model(exported)(x[:, :-1])
        want = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()

    # TinyLlama's packing, as `want` is computed (an import may continue with either setting)
    cfg = train_config(tiny_mix, run, steps=7, document_masking=False)
    with pytest.raises(CheckpointError):  # a fresh start would silently ignore the import
        train(cfg, resume=False, source=source)
    train(cfg, resume=True, source=source)
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [6, 7]
    assert metrics[0]["loss"] == pytest.approx(want, abs=1e-4)
    trainer = json.loads((run / "checkpoints/step-7/trainer.json").read_text())
    assert trainer["step"] == 7


def test_import_refuses_a_mismatched_train_config(exported, tiny_mix, tmp_path):
    from tinyllama.errors import SpecError
    from tinyllama.hf import import_hf

    cfg = tmp_path / "train.toml"
    cfg.write_text(f'mix = "{tiny_mix}"\nout = "run"\nmodel = "tiny"\n')  # max_seq_len 2048 != 64
    with pytest.raises(SpecError, match="max_seq_len"):
        import_hf(exported, tmp_path / "run", config=cfg)


def test_import_tinyllama_bin_layout_and_transformers_saved_dir(exported, tiny_run, tmp_path):
    """TinyLlama's older repos ship pytorch_model.bin; transformers 5 writes `rope_parameters`."""
    from tinyllama.hf import load_model

    ref = load_model(tiny_run).state_dict()
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True, dtype=torch.float32)
    saved = tmp_path / "saved"
    hf.save_pretrained(saved)
    binl = tmp_path / "bin"
    binl.mkdir()
    (binl / "config.json").write_text((exported / "config.json").read_text())
    torch.save({k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}, binl / "pytorch_model.bin")
    for d, exact in ((saved, True), (binl, False)):
        sd = load_model(d).state_dict()
        for k in ref:
            if exact:
                assert torch.equal(sd[k], ref[k]), (d, k)
            else:  # stored in bf16, as TinyLlama's checkpoints are
                assert torch.equal(sd[k], ref[k].to(torch.bfloat16).float()), (d, k)


def test_import_errors_name_the_file(tmp_path):
    from tinyllama.errors import InputError
    from tinyllama.hf import import_hf, load_model

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(InputError, match="config.json.*not a Llama"):
        import_hf(d, tmp_path / "run")
    with pytest.raises(InputError, match="neither a training checkpoint"):
        load_model(tmp_path / "empty")


# ---- the demo ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_leaves_the_spec_layout(tmp_path):
    """`tinyllama demo --out DIR` on the bundled data (shortened: 2 steps of the `tiny` model)."""
    from tinyllama.demo import run_demo

    torch.set_num_threads(1)
    lines = []
    s = run_demo(tmp_path / "demo", max_steps=22, overrides=['model="tiny"'], echo=lines.append)
    d = tmp_path / "demo"
    assert (d / "mix/mix.json").is_file()
    # the family: the trunk once (to its branch point, step 20), each branch from it (to step 22 here)
    assert (d / "run/metrics.jsonl").is_file() and (d / "run/checkpoints/step-20/trainer.json").is_file()
    for name in ("v1_1", "math_code", "chinese"):
        trainer = json.loads((d / "branches" / name / "checkpoints/step-22/trainer.json").read_text())
        assert trainer["branch"] == name and trainer["branched_from"]["step"] == 20
    assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d / "hf/model.safetensors").is_file() and (d / "hf/tokenizer.json").is_file()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(d / "hf", local_files_only=True).eval()
    ours = tinyllama.load_model(d / "branches/v1_1")
    x = torch.tensor([[1, 450, 4955, 310, 278]])
    with torch.no_grad():
        assert torch.allclose(hf_model(x).logits, ours(x), atol=1e-4)  # the export is the trained model
    assert s["sample"].startswith("The history of the") and len(s["sample"]) > len("The history of the")
    ev = json.loads((d / "eval.json").read_text())
    assert [r["path"] for r in ev] == [str(d / "run")] + [str(d / "branches" / n) for n in ("chinese", "math_code",
                                                                                             "v1_1")]
    assert set(ev[0]["corpora"]) == {"slimpajama", "starcoder", "proofpile", "skypile"}
    assert all(r["all"]["perplexity"] > 1 for r in ev)
    assert any("perplexity" in ln for ln in lines) and any("└─ chinese" in ln for ln in lines)


def test_import_at_a_stage_start(exported, tmp_path):
    """`import-hf --stage continual` (v1.1's stage-2 start): the step where the mix's schedule
    starts that stage, with the tokens before it."""
    from tinyllama.data.build import build_mix
    from tinyllama.hf import import_hf

    corpora = f"""
    [corpora.slimpajama]
    paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
    dedup = "none"

    [corpora.skypile]
    paths = ["{CORPORA}/skypile/*.jsonl"]
    dedup = "none"
    """
    stages = """
    [[stages]]
    name = "basic"
    tokens = "40K"
    batch_tokens = "4K"
    weights = { slimpajama = 1.0 }

    [[stages]]
    name = "continual"
    tokens = "40K"
    batch_tokens = "4K"
    weights = { slimpajama = 0.5, skypile = 0.5 }
    """
    spec = write_spec(tmp_path, corpora=corpora, stages=stages)
    build_mix(spec, tmp_path / "mix", 1)
    mix = tinyllama.Mix(tmp_path / "mix")
    cfg = tmp_path / "train.toml"
    model = "\n".join(f"{k} = {v}" for k, v in MODEL.items())
    cfg.write_text(f'mix = "mix"\nout = "run"\n[model]\n{model}\n')
    step_dir = import_hf(exported, tmp_path / "run", config=cfg, stage="continual")
    trainer = json.loads((step_dir / "trainer.json").read_text())
    step = trainer["step"]
    assert 0 < step < mix.num_steps()
    assert mix.tokens_before(step) >= 40_000 > mix.tokens_before(step - 1)
    assert trainer["tokens"] == mix.tokens_before(step)
    assert trainer["config"]["mix"] == str(tmp_path / "mix")


@pytest.mark.slow
def test_export_from_a_two_rank_checkpoint(tmp_path, tmp_path_factory):
    """A checkpoint saved by 2 FSDP ranks (torchrun, gloo) exports whole: transformers' logits
    equal ours."""
    from test_train import encode_streams, run_torchrun, write_config

    from tinyllama.hf import export, load_model

    streams = encode_streams(tmp_path_factory.mktemp("streams2"))
    cfg = write_config(tmp_path / "w2")
    run_torchrun(2, cfg, streams, overrides=["run.max_steps=3"])
    run = tmp_path / "w2/run"
    assert json.loads((run / "checkpoints/step-3/trainer.json").read_text())["world"] == 2
    hf_dir = export(run, tmp_path / "hf", tokenizer=streams.parent / "tokenizer.json")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32)
    ids = torch.from_numpy(np.load(streams)["slimpajama"][:64].astype(np.int64))[None]
    with torch.no_grad():
        torch.testing.assert_close(load_model(run)(ids), hf(input_ids=ids).logits, atol=2e-5, rtol=1e-5)
