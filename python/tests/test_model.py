"""Model checks: shapes and parameter count, parity with transformers' LlamaForCausalLM,
TinyLlama's init, causality, meta-device construction."""

from __future__ import annotations

import math

import pytest
import torch

from tinyllama.model import (
    Llama,
    ModelConfig,
    build_model,
    config_from_hf,
    from_hf_state_dict,
    hf_config,
    hf_state_dict,
)

torch.set_num_threads(1)


def tinyllama_params_by_hand() -> int:
    """TinyLlama 1.1B, counted from its published shapes (not from our code)."""
    d, layers, vocab, inter, kv_dim = 2048, 22, 32000, 5632, 4 * (2048 // 32)
    attn = d * d + d * kv_dim + d * kv_dim + d * d  # q, k, v, o
    mlp = 3 * d * inter  # gate, up, down
    norms = 2 * d
    return vocab * d + layers * (attn + mlp + norms) + d + d * vocab  # embed, blocks, norm, lm_head


def test_tinyllama_1b_on_meta():
    cfg = ModelConfig.from_name("tinyllama-1.1b")
    with torch.device("meta"):
        model = Llama(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == tinyllama_params_by_hand() == cfg.num_params() == 1_100_048_384
    assert all(p.is_meta for p in model.parameters())
    blk = model.layers[0]
    assert blk.self_attn.qkv_proj.weight.shape == (2048 + 2 * 256, 2048)  # 32 q heads, 4 k, 4 v (x 64)
    assert blk.mlp.gate_up_proj.weight.shape == (2 * 5632, 2048)
    assert len(model.layers) == 22 and model.lm_head.weight.shape == (32000, 2048)
    # The FLOP count behind MFU: 100% of an H100 (989 TFLOP/s bf16) is about 135k tokens/s.
    assert 989e12 / cfg.flops_per_token(2048) == pytest.approx(135_213, rel=1e-4)


def _hf_model(cfg: ModelConfig):
    transformers = pytest.importorskip("transformers")
    hc = {k: v for k, v in hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hc, attn_implementation="sdpa"))
    return model.eval()


def test_logits_match_transformers():
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, max_seq_len=128)
    ours = build_model(cfg, seed=1).eval()
    hf = _hf_model(cfg)
    hf.load_state_dict(hf_state_dict(ours), strict=True)
    assert torch.equal(
        hf.model.layers[1].self_attn.k_proj.weight, ours.layers[1].self_attn.qkv_proj.weight[64:96]
    )
    x = torch.randint(0, cfg.vocab_size, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and back: a transformers state dict loads into ours unchanged
    again = build_model(cfg, seed=2).eval()
    again.load_state_dict(from_hf_state_dict(hf.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x), a, rtol=0, atol=0)
    assert config_from_hf(hf_config(cfg)) == cfg


def test_init_is_tinyllamas():
    cfg = ModelConfig(n_layer=4, n_embd=256, n_head=8, n_kv_head=4, intermediate_size=704)
    m = build_model(cfg, seed=7)
    small = math.sqrt(2 / (5 * 256))
    assert m.embed_tokens.weight.std().item() == pytest.approx(small, rel=0.02)
    assert m.lm_head.weight.std().item() == pytest.approx(small, rel=0.02)
    assert m.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(small, rel=0.05)
    down = 1 / math.sqrt(704) / 4
    assert m.layers[3].mlp.down_proj.weight.std().item() == pytest.approx(down, rel=0.05)
    assert torch.equal(m.layers[1].input_layernorm.weight, torch.ones(256))
    # per-parameter seeded: same seed -> same weights, other seed -> different
    assert torch.equal(build_model(cfg, seed=7).lm_head.weight, m.lm_head.weight)
    assert not torch.equal(build_model(cfg, seed=8).lm_head.weight, m.lm_head.weight)
    assert not torch.equal(m.layers[0].mlp.gate_up_proj.weight, m.layers[1].mlp.gate_up_proj.weight)


def test_causal_and_shapes():
    cfg = ModelConfig.from_name("tiny")
    m = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 30:] = (y[:, 30:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = m(x), m(y)
    assert a.shape == (3, 40, cfg.vocab_size)
    torch.testing.assert_close(a[:, :30], b[:, :30])
    assert not torch.allclose(a[:, 30:], b[:, 30:])
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, cfg.max_seq_len + 1, dtype=torch.long))


def test_activation_checkpointing_same_gradients():
    cfg = ModelConfig.from_name("tiny")
    x = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    grads = []
    for ac in (False, True):
        m = build_model(cfg)
        m.activation_checkpointing = ac
        m(x).float().logsumexp(-1).mean().backward()
        grads.append(m.layers[0].self_attn.qkv_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_validate():
    bad = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=3, intermediate_size=8)
    assert any(e.startswith("n_kv_head") for e in bad.validate())
    assert ModelConfig.from_name("tinyllama-1.1b").validate() == []
