"""float8 training (`run.float8`, train/float8.py, torchao). On a CPU: the refusal in one line,
the conversion of the blocks' Linear layers only, and, through torchao's emulation
(TINYLLAMA_FLOAT8_EMULATE=1), a run whose checkpoints keep the high-precision weights under
their usual names: it resumes, exports and loads as a run without float8 does. On an H100-class
GPU (`gpu` marker, skipped elsewhere): real float8 steps under compile track bf16's losses."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao.float8")  # the `float8` extra (.ci/run installs it)

from test_train import CONFIG, losses, read_metrics, run_inproc, streams, write_config

from tinyllama.errors import SpecError
from tinyllama.model import ModelConfig, build_model
from tinyllama.train import float8
from tinyllama.train.checkpoint import model_from_checkpoint

__all__ = ["streams"]  # the fixture, re-exported for pytest

FLOAT8 = ["run.float8=true", "run.save_every=4"]
BLOCK_LINEARS = {f"layers.{i}.{n}" for i in range(2) for n in
                 ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}


def tiny() -> ModelConfig:
    return ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, max_seq_len=64)


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(float8.EMULATE_ENV, "1")


@pytest.mark.parametrize("fsdp", [False, True])
def test_only_the_blocks_linear_layers_are_converted(fsdp):
    model = build_model(tiny(), "cpu", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert float8.convert(model, fsdp=fsdp, emulate=True) == len(BLOCK_LINEARS)
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for n, k in kinds.items() if k == "Float8Linear"} == BLOCK_LINEARS
    assert kinds["lm_head"] == "Linear" and type(model.embed_tokens).__name__ == "Embedding"
    after = model.state_dict()
    assert after.keys() == before.keys()  # same names: checkpoints, export and load_model unchanged
    for k, v in after.items():
        assert v.dtype == torch.float32 and torch.equal(torch.Tensor(v.data) if fsdp else v, before[k]), k


def test_float8_is_refused_in_one_line_where_the_device_cannot(streams, tmp_path, monkeypatch):
    monkeypatch.delenv(float8.EMULATE_ENV, raising=False)
    cfg = write_config(tmp_path)
    with pytest.raises(SpecError) as e:
        run_inproc(cfg, streams, ["run.float8=true"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{cfg}: key 'run.float8': float8 training needs an NVIDIA GPU")
    assert msg.endswith("this run is on cpu; set run.float8 = false")
    assert not (tmp_path / "run/checkpoints").exists()


def test_without_torchao_float8_is_one_line(streams, tmp_path, monkeypatch, emulate):
    import sys

    monkeypatch.setitem(sys.modules, "torchao.float8", None)
    cfg = write_config(tmp_path)
    with pytest.raises(SpecError, match=r"'run.float8': needs torchao \(pip install 'tinyllama-forge\[float8\]'\)$"):
        run_inproc(cfg, streams, ["run.float8=true"])


def test_emulated_float8_run_checkpoints_high_precision_weights_resumes_and_exports(streams, tmp_path, emulate):
    """8 steps in float8 (emulated), stopped after 4 and resumed: the same losses as straight
    through; the checkpoint holds fp32 weights under the names of a run without float8 (whose
    losses float8 follows closely, not exactly); load_model and export read it unchanged."""
    cfg = write_config(tmp_path / "f8", CONFIG.replace("max_steps = 12", "max_steps = 8"))
    straight = run_inproc(cfg, streams, FLOAT8)
    plain = run_inproc(write_config(tmp_path / "plain", CONFIG.replace("max_steps = 12", "max_steps = 8")),
                       streams, ["run.save_every=4"])
    f8_losses, plain_losses = losses(straight), losses(plain)
    assert f8_losses != plain_losses  # float8 really ran
    assert all(abs(f8_losses[s] - plain_losses[s]) < 0.05 * plain_losses[s] for s in plain_losses)

    ckpt = tmp_path / "f8/run/checkpoints/step-8"
    model = model_from_checkpoint(ckpt)  # a plain Llama: the names and shapes are the usual ones
    ref = model_from_checkpoint(tmp_path / "plain/run/checkpoints/step-8")
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    trainer = json.loads((ckpt / "trainer.json").read_text())
    assert trainer["config"]["run"]["float8"] is True

    again = write_config(tmp_path / "again", CONFIG.replace("max_steps = 12", "max_steps = 8"))
    run_inproc(again, streams, FLOAT8 + ["run.stop_after=4"])
    resumed = run_inproc(again, streams, FLOAT8, resume=True)
    assert losses(resumed) == f8_losses  # bit-identical through a resume

    from tinyllama.hf import export

    hf = tmp_path / "hf"
    export(ckpt, hf, tokenizer=streams.parent / "tokenizer.json")
    transformers = pytest.importorskip("transformers")
    loaded = transformers.LlamaForCausalLM.from_pretrained(hf)
    x = torch.randint(3, 32000, (1, 16))
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x), atol=1e-4)


def test_a_plain_checkpoint_continues_in_float8(streams, tmp_path, emulate):
    """float8 is how the matmuls run, not a property of the weights: a run may turn it on at a
    resume (and off again)."""
    cfg = write_config(tmp_path, CONFIG.replace("max_steps = 12", "max_steps = 8"))
    run_inproc(cfg, streams, ["run.save_every=4", "run.stop_after=4"])
    resumed = run_inproc(cfg, streams, FLOAT8, resume=True)
    assert sorted(losses(resumed)) == list(range(1, 9))
    assert read_metrics(tmp_path / "run")[-1]["step"] == 8


def _h100_class() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= float8.MIN_CAPABILITY


@pytest.mark.gpu
@pytest.mark.skipif(not _h100_class(), reason="needs a CUDA GPU with float8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("compile", [False, True])
def test_float8_steps_on_a_gpu_track_bf16(streams, tmp_path, monkeypatch, compile):
    monkeypatch.delenv(float8.EMULATE_ENV, raising=False)
    sets = ["run.precision=\"bf16\"", f"run.compile={'true' if compile else 'false'}", "run.max_steps=8",
            "run.save_every=4"]
    bf16 = run_inproc(write_config(tmp_path / "bf16"), streams, sets)
    f8 = run_inproc(write_config(tmp_path / "f8"), streams, sets + ["run.float8=true"])
    a, b = losses(bf16), losses(f8)
    assert a != b and all(abs(a[s] - b[s]) < 0.05 * a[s] for s in a)
    m = model_from_checkpoint(tmp_path / "f8/run/checkpoints/step-8")
    assert all(v.dtype == torch.float32 for v in m.state_dict().values())


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _h100_class() or torch.cuda.device_count() < 2, reason="needs 2 GPUs with float8 tensor cores")
def test_float8_all_gather_under_fsdp_on_two_gpus(streams, tmp_path, monkeypatch):
    """torchrun, 2 FSDP ranks (NCCL): the weights are all-gathered in float8 with their scales
    computed once per step; the run tracks the one-GPU float8 run and saves fp32 weights."""
    from test_train import run_torchrun

    monkeypatch.delenv(float8.EMULATE_ENV, raising=False)
    sets = ['run.precision="bf16"', "run.max_steps=8", "run.save_every=4", "run.float8=true"]
    one = run_inproc(write_config(tmp_path / "one"), streams, sets)
    two = run_torchrun(2, write_config(tmp_path / "two"), streams, sets)
    a, b = losses(one), losses(two)
    assert all(abs(a[s] - b[s]) < 0.05 * a[s] for s in a)
    m = model_from_checkpoint(tmp_path / "two/run/checkpoints/step-8")
    assert all(v.dtype == torch.float32 for v in m.state_dict().values())
