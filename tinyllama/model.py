"""The Llama 2 architecture, top to bottom (nanoGPT style).

    tokens -> embed_tokens -> n_layer x Block -> norm -> lm_head -> logits
    Block:  x = x + self_attn(input_layernorm(x))          (GQA, RoPE on q and k)
            x = x + mlp(post_attention_layernorm(x))        (SwiGLU)

Module names are Hugging Face's `LlamaForCausalLM` names without the `model.` prefix, except
that q/k/v and gate/up are fused into one matmul each (`qkv_proj`, `gate_up_proj`: fewer,
larger kernels). RoPE uses HF's "rotate half" convention, so `hf_state_dict` /
`from_hf_state_dict` only rename and split/concatenate rows: weights move 1:1 to and from
`transformers` (logits identical).

Initialisation follows TinyLlama (its lit_gpt `GPT._init_weights`, GPT-NeoX "small init"):
every Linear and the Embedding ~ N(0, sqrt(2 / (5 * fan_in))); the MLP output projection
(`down_proj`) ~ N(0, 1 / sqrt(intermediate_size) / n_layer); RMSNorm weights = 1. TinyLlama
did NOT scale the attention output projection (`o_proj`), so neither do we. Each parameter is
drawn from its own generator seeded by (seed, parameter name), so the initial weights are the
same whether the model is built whole or sharded over any number of ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # flash-attn is optional: used on CUDA in bf16/fp16 when importable
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = None


@dataclass
class ModelConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    intermediate_size: int
    vocab_size: int = 32000
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    max_seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        if name not in NAMED_CONFIGS:
            raise KeyError(f"unknown model {name!r} (known: {', '.join(sorted(NAMED_CONFIGS))})")
        return dataclasses.replace(NAMED_CONFIGS[name])

    def validate(self) -> list[str]:
        """Problems with this config, as (key, message) strings; empty when valid."""
        errs = []
        for f in (
            "n_layer",
            "n_embd",
            "n_head",
            "n_kv_head",
            "intermediate_size",
            "vocab_size",
            "max_seq_len",
        ):
            if getattr(self, f) <= 0:
                errs.append(f"{f}: must be > 0")
        if not errs:
            if self.n_embd % self.n_head:
                errs.append(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
            elif self.head_dim % 2:
                errs.append(f"n_embd: head dim {self.head_dim} must be even for RoPE")
            if self.n_head % self.n_kv_head:
                errs.append(f"n_kv_head: n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.norm_eps <= 0:
            errs.append("norm_eps: must be > 0")
        return errs

    def num_params(self, embedding: bool = True) -> int:
        d, kv = self.n_embd, self.n_kv_head * self.head_dim
        attn = d * d * 2 + d * kv * 2  # q, o  +  k, v
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d  # + two RMSNorm weights
        total = self.n_layer * per_layer + d + self.vocab_size * d  # final norm + lm_head
        return total + (self.vocab_size * d if embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B:
        6 * N  +  12 * n_layer * n_embd * seq_len
        N = parameters excluding the input embedding (a lookup, not a matmul; lm_head counts);
        the second term is the q.k and attn.v matmuls, counted in full (no causal discount).
        For tinyllama-1.1b at seq 2048: 7.31e9 FLOPs/token, so 100% of an H100's 989 TFLOP/s
        bf16 dense peak is about 135k tokens/s.
        """
        return 6 * self.num_params(embedding=False) + 12 * self.n_layer * self.n_embd * seq_len


NAMED_CONFIGS: dict[str, ModelConfig] = {
    # TinyLlama v1.1: 1,100,048,384 parameters.
    "tinyllama-1.1b": ModelConfig(n_layer=22, n_embd=2048, n_head=32, n_kv_head=4, intermediate_size=5632),
    # Small shapes with the Llama 2 vocabulary, for the demo and for tests on a CPU.
    "tiny": ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176),
    "demo": ModelConfig(n_layer=4, n_embd=256, n_head=8, n_kv_head=4, intermediate_size=704),
    "small": ModelConfig(n_layer=8, n_embd=512, n_head=8, n_kv_head=4, intermediate_size=1408),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF Llama does), scale in the input dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cache(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [max_seq_len, head_dim / 2]: angle t * base^(-2i / head_dim)."""
    inv_freq = 1.0 / (
        cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    )
    freqs = torch.outer(torch.arange(cfg.max_seq_len, device=device).float(), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]. Rotates each pair (i, i + D/2) by its angle: HF's "rotate half"
    convention, x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin), written on the two halves."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    c, s = cos[:, None, :], sin[:, None, :]
    # cos/sin stay fp32, so in bf16 the rotation is computed in fp32 and rounded once.
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention. q: [B, T, H, D], k/v: [B, T, KV, D] -> [B, T, H, D]."""
    if flash_attn_func is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return flash_attn_func(q, k, v, causal=True)  # handles GQA itself
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # sdpa wants [B, H, T, D]
    if k.shape[1] == q.shape[1]:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif _SDPA_GQA:  # the kernel reads each KV head for its group of query heads: no copies
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        rep = q.shape[1] // k.shape[1]
        y = F.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=True
        )
    return y.transpose(1, 2)


_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # q, k and v in one matmul (rows: n_head q heads, then n_kv_head k heads, then v heads);
        # `hf_state_dict` splits it into HF's q_proj / k_proj / v_proj.
        self.qkv_proj = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, H + 2 * KV, self.head_dim)
        qk = apply_rope(qkv[:, :, : H + KV], cos, sin)  # q and k heads rotated together
        q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV :]
        y = attention(q, k, v).reshape(B, T, H * self.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate and up in one matmul (`gate_up_proj`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # untied
        cos, sin = rope_cache(cfg)
        # Not persistent: derived from the config, so not part of checkpoints or exports.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab]."""
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} > max_seq_len {self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.layers:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def init_weights(self, seed: int = 3407) -> None:
        """(Re)initialise every parameter and the RoPE buffers in place, TinyLlama's way.

        Works on materialised meta-device models (`to_empty`) and on FSDP2-sharded ones: each
        parameter is drawn whole from its own seeded generator, and a sharded parameter keeps
        its own slice, so the result does not depend on the world size.
        """
        cfg = self.config
        for name, p in self.named_parameters():
            shape, device = p.shape, _local(p).device
            if name.endswith("layernorm.weight") or name == "norm.weight":
                full = torch.ones(shape, device=device)
            else:
                fan_in = shape[1]
                std = math.sqrt(2.0 / (5 * fan_in))
                if name.endswith("mlp.down_proj.weight"):
                    std = 1.0 / math.sqrt(cfg.intermediate_size) / cfg.n_layer
                g = torch.Generator(device=device).manual_seed(_param_seed(seed, name))
                full = torch.empty(shape, device=device).normal_(0.0, std, generator=g)
            _copy_full_into(p, full)
        self.init_rope()

    @torch.no_grad()
    def init_rope(self) -> None:
        """Recompute the RoPE buffers (garbage after `to_empty`)."""
        cos, sin = rope_cache(self.config, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def _param_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def _copy_full_into(p: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into p, which may be a DTensor holding one shard of it."""
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: every rank holds `full` already, so each just slices (no comm).
        shard = distribute_tensor(full.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
        p.to_local().copy_(shard.to_local())
    else:
        p.copy_(full)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int = 3407) -> Llama:
    """A fully materialised, initialised model (built on meta first: no wasted default init)."""
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model


# ---- Hugging Face names ------------------------------------------------------------------


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Our weights under `LlamaForCausalLM` names; the fused qkv / gate_up matrices are split
    row-wise into HF's separate projections (views: no tensor is copied or changed)."""
    cfg = model.config
    q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    out = {}
    for k, v in model.state_dict().items():
        name = k if k.startswith("lm_head.") else "model." + k
        if k.endswith("self_attn.qkv_proj.weight"):
            base = name[: -len("qkv_proj.weight")]
            q, kk, vv = v.split([q_rows, kv_rows, kv_rows], dim=0)
            out.update({base + "q_proj.weight": q, base + "k_proj.weight": kk, base + "v_proj.weight": vv})
        elif k.endswith("mlp.gate_up_proj.weight"):
            base = name[: -len("gate_up_proj.weight")]
            gate, up = v.chunk(2, dim=0)
            out.update({base + "gate_proj.weight": gate, base + "up_proj.weight": up})
        else:
            out[name] = v
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `LlamaForCausalLM` state dict under our names (drops HF's rotary buffers)."""
    out, parts = {}, {}
    for k, v in sd.items():
        if "rotary_emb" in k:
            continue
        if k == "lm_head.weight":
            out[k] = v
            continue
        if not k.startswith("model."):
            raise KeyError(f"unexpected Hugging Face tensor name {k!r}")
        k = k[len("model.") :]
        for fused, names in _FUSED.items():
            for n in names:
                if k.endswith(f".{n}.weight"):
                    parts.setdefault(k[: -len(f"{n}.weight")] + f"{fused}.weight", {})[n] = v
                    break
            else:
                continue
            break
        else:
            out[k] = v
    for k, p in parts.items():
        fused = k.rsplit(".", 2)[-2]
        missing = [n for n in _FUSED[fused] if n not in p]
        if missing:
            raise KeyError(f"Hugging Face state dict lacks {missing} for {k!r}")
        out[k] = torch.cat([p[n] for n in _FUSED[fused]], dim=0)
    return out


_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def hf_config(cfg: ModelConfig) -> dict:
    """`config.json` fields of the equivalent `LlamaConfig`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "max_position_embeddings": cfg.max_seq_len,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("tie_word_embeddings"):
        raise ValueError("tied embeddings are not supported (Llama 2 / TinyLlama are untied)")
    return ModelConfig(
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        intermediate_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_base=hf.get("rope_theta", 10000.0),
        max_seq_len=hf.get("max_position_embeddings", 2048),
    )
