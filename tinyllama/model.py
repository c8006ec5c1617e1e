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

Packed documents: a training window holds several documents (`<s> A </s><s> B </s>...`).
`model(input_ids, document_ids)` keeps them apart: a token attends only to earlier tokens of
its own document and RoPE positions restart at 0 where each document starts, so every
document's logits are those of the document run alone (`document_ids=None`: the window is one
sequence, as TinyLlama trained). `document_ids_from_tokens` derives the ids from BOS / EOS.
`model(input_ids, targets=...)` returns the per-token loss computed in chunks
(`chunked_cross_entropy`): the [B, T, vocab] fp32 logits are never held at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # flash-attn is optional: used on CUDA in bf16/fp16 when importable
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = flash_attn_varlen_func = None

try:  # FlexAttention (torch >= 2.5): document masks as block-sparse attention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    create_block_mask = flex_attention = None

try:  # PyTorch's own varlen flash attention (CUDA; the GQA / causal-window form of newer torch)
    from torch.nn.attention.varlen import varlen_attn

    if not {"enable_gqa", "window_size"} <= set(inspect.signature(varlen_attn).parameters):
        varlen_attn = None
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None


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
    """x: [B, T, H, D]; cos/sin: [T, D/2] or [B, T, D/2] (per-document positions). Rotates each
    pair (i, i + D/2) by its angle: HF's "rotate half" convention,
    x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin), written on the two halves."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    c, s = cos[..., None, :], sin[..., None, :]  # [T, 1, D/2], or [B, T, 1, D/2] per document
    # cos/sin stay fp32, so in bf16 the rotation is computed in fp32 and rounded once.
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).type_as(x)


# ---- Packed documents ---------------------------------------------------------------------


def document_ids_from_tokens(
    input_ids: torch.Tensor, bos_id: int | None = None, eos_id: int | None = None
) -> torch.Tensor:
    """Document ids [..., T] (int64, 0, 1, 2, ... along each row) from the packing markers.

    A new document starts at each BOS token and right after each EOS token (either marker may
    be None: a mix stores BOS, EOS or both; `</s><s>` is one border). The first token of a row
    always starts a document, so a window that begins mid-document gives that fragment its own id.
    """
    start = torch.zeros_like(input_ids, dtype=torch.bool)
    start[..., 0] = True
    if bos_id is not None:
        start |= input_ids == bos_id
    if eos_id is not None:
        start[..., 1:] |= input_ids[..., :-1] == eos_id
    return start.cumsum(-1) - 1


@dataclass
class Documents:
    """Where the documents of a packed batch lie, in the form the chosen attention kernel reads.
    Built once per forward by `Documents.build` and shared by every layer."""

    kernel: str  # "flash" (flash-attn varlen) | "varlen" (torch's) | "flex" (FlexAttention) | "sdpa" (mask)
    positions: torch.Tensor  # [B, T] RoPE position of each token within its document
    sdpa_mask: torch.Tensor | None = None  # [B, 1, T, T] bool: same document and not in the future
    block_mask: object | None = None  # FlexAttention BlockMask of the same rule
    cu_seqlens: torch.Tensor | None = None  # int32 [n_docs + 1]: document starts in the flat batch

    @classmethod
    def build(cls, document_ids: torch.Tensor, kernel: str) -> Documents:
        """A document is a run of equal ids: it starts wherever the id changes along the row
        (ids need not be unique across a row, only differ from their neighbour's)."""
        B, T = document_ids.shape
        start = torch.ones_like(document_ids, dtype=torch.bool)
        start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        idx = torch.arange(T, device=document_ids.device).expand(B, T)
        # position = t - (index of the latest document start at or before t)
        positions = idx - torch.where(start, idx, 0).cummax(1).values
        docs = cls(kernel, positions)
        seg = start.cumsum(1)  # [B, T] document number within the row
        if kernel in ("flash", "varlen"):
            # varlen kernels see the batch as one flat sequence of B*T tokens cut at every start
            # (each row's first token is a start, so no document crosses rows)
            flat = start.flatten().nonzero().flatten()
            docs.cu_seqlens = F.pad(flat, (0, 1), value=B * T).to(torch.int32)
        elif kernel == "flex":

            def same_doc_causal(b, h, q_idx, kv_idx):
                return (seg[b, q_idx] == seg[b, kv_idx]) & (q_idx >= kv_idx)

            docs.block_mask = create_block_mask(same_doc_causal, B, None, T, T, device=document_ids.device)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
            docs.sdpa_mask = ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]
        return docs


def attention_kernel(device: torch.device, dtype: torch.dtype, requested: str = "auto") -> str:
    """The document-masked attention kernel for this device / dtype ("auto") or `requested`.

    CUDA in bf16/fp16: a varlen kernel, flash-attn's when importable, else PyTorch's own: each
    document is its own causal sequence, nothing masked is computed and no mask is built.
    Otherwise on CUDA FlexAttention (compiled: skips the fully masked blocks). CPU and
    elsewhere: SDPA with an explicit [T, T] mask. FlexAttention runs on a CPU only when asked
    for, and only forward (its backward is CUDA-only in torch 2.15; eager it computes every
    score anyway; compiled, a tiny block takes ~45 s to build on 2 cores).
    """
    if requested != "auto":
        return requested
    if device.type == "cuda":
        if dtype in (torch.bfloat16, torch.float16) and flash_attn_varlen_func is not None:
            return "flash"
        if dtype in (torch.bfloat16, torch.float16) and varlen_attn is not None:
            return "varlen"
        if flex_attention is not None:
            return "flex"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None = None) -> torch.Tensor:
    """Causal attention, within documents when `docs` is given.
    q: [B, T, H, D], k/v: [B, T, KV, D] -> [B, T, H, D]. Every kernel reads each KV head for
    its group of query heads itself (GQA) where it can, instead of copying KV heads."""
    B, T, H, D = q.shape
    if docs is None and flash_attn_func is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return flash_attn_func(q, k, v, causal=True)
    if docs is not None and docs.kernel == "flash":
        # max_seqlen = T (an upper bound) rather than the longest document: no device->host sync,
        # and a compiled block sees the same int every step (no recompiles).
        y = flash_attn_varlen_func(
            q.reshape(B * T, H, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D),
            docs.cu_seqlens, docs.cu_seqlens, T, T, causal=True,
        )
        return y.view(B, T, H, D)
    if docs is not None and docs.kernel == "varlen":
        y = varlen_attn(
            q.reshape(B * T, H, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D),
            docs.cu_seqlens, docs.cu_seqlens, T, T, window_size=(-1, 0), enable_gqa=k.shape[2] != H,
        )
        return y.view(B, T, H, D)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # these kernels want [B, H, T, D]
    if docs is not None and docs.kernel == "flex":
        y = _flex(q.is_cuda)(q, k, v, block_mask=docs.block_mask, enable_gqa=k.shape[1] != H)
        return y.transpose(1, 2)
    mask = dict(is_causal=True) if docs is None else dict(attn_mask=docs.sdpa_mask)
    if k.shape[1] == H:
        y = F.scaled_dot_product_attention(q, k, v, **mask)
    elif _SDPA_GQA:
        y = F.scaled_dot_product_attention(q, k, v, **mask, enable_gqa=True)
    else:
        rep = H // k.shape[1]
        y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), **mask)
    return y.transpose(1, 2)


_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
_FLEX_COMPILED = None


def _flex(cuda: bool):
    """FlexAttention; on CUDA compiled once (eager flex_attention computes the full score
    matrix: the block sparsity only pays off compiled). Inside a compiled block dynamo inlines it."""
    global _FLEX_COMPILED
    if not cuda:
        return flex_attention
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # q, k and v in one matmul (rows: n_head q heads, then n_kv_head k heads, then v heads);
        # `hf_state_dict` splits it into HF's q_proj / k_proj / v_proj.
        self.qkv_proj = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, docs: Documents | None = None):
        B, T, _ = x.shape
        H, KV = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, H + 2 * KV, self.head_dim)
        qk = apply_rope(qkv[:, :, : H + KV], cos, sin)  # q and k heads rotated together
        q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV :]
        y = attention(q, k, v, docs).reshape(B, T, H * self.head_dim)
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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, docs: Documents | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, docs)
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
        self.attention_kernel = "auto"  # or "flash" / "flex" / "sdpa": see `attention_kernel`
        self.loss_chunk = 2048  # tokens per chunk of `chunked_cross_entropy`

    def forward(
        self,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab].

        document_ids [B, T] (ints; a document is a run of equal ids): attention stays within each
        document and RoPE positions restart at its first token. None: one causal sequence.
        targets [B, T]: return the per-token cross-entropy [B, T] (fp32) instead of the logits,
        computed chunk by chunk (`chunked_cross_entropy`; -100 = no loss at that position).
        """
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} > max_seq_len {self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)
        if document_ids is None:
            docs, cos, sin = None, self.rope_cos[:T], self.rope_sin[:T]
        else:
            # Built once here, outside the (possibly compiled) blocks; the kernel is picked for
            # the dtype the blocks compute in (bf16 under autocast or FSDP mixed precision).
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            docs = Documents.build(document_ids, attention_kernel(x.device, dtype, self.attention_kernel))
            cos, sin = self.rope_cos[docs.positions], self.rope_sin[docs.positions]  # [B, T, D/2]
        for block in self.layers:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, docs, use_reentrant=False)
            else:
                x = block(x, cos, sin, docs)
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        return chunked_cross_entropy(x, self.lm_head.weight, targets, chunk=self.loss_chunk)

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


# ---- Loss --------------------------------------------------------------------------------


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 2048, ignore_index: int = -100
) -> torch.Tensor:
    """Per-token `F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")`
    without the full logits: hidden [..., d], weight [vocab, d], targets [...] -> loss [...] fp32.

    The tokens are cut into chunks of `chunk`: the forward keeps only each token's logsumexp,
    the backward recomputes one chunk's logits at a time (one extra lm_head matmul), so peak
    memory holds one chunk's fp32 logits instead of all of them (for a 1.1B micro-batch of
    8 x 2048 tokens: 2048 x 32000 x 4 B = 262 MB instead of 2.1 GB, plus its gradient).
    Under autocast the matmul runs in the autocast dtype, as `lm_head` would.
    """
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    # The loss comes back in `targets`' shape, allocated so (not a view of a flat result): a
    # view returned by an FSDP2-wrapped model makes FSDP warn on every step.
    return _ChunkedCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk, ignore_index, targets.shape
    )


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, ignore_index, shape):
        with torch.autocast(hidden.device.type, enabled=False):
            lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            out = torch.empty(shape, dtype=torch.float32, device=hidden.device)
            loss = out.view(-1)  # written through this flat view; `out` is returned
            for s in range(0, hidden.shape[0], chunk):
                logits = F.linear(hidden[s : s + chunk], weight).float()
                t = targets[s : s + chunk]
                lse[s : s + chunk] = logits.logsumexp(-1)
                picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                loss[s : s + chunk] = torch.where(t == ignore_index, 0.0, lse[s : s + chunk] - picked)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.ignore_index = chunk, ignore_index
        return out

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_loss = grad_loss.reshape(-1)
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if need_h else None
        # accumulated over chunks in fp32, rounded once (the unchunked matmul rounds once too)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], ctx.chunk):
                h, t = hidden[s : s + ctx.chunk], targets[s : s + ctx.chunk]
                # d loss / d logits = softmax - onehot(target), times the incoming gradient
                g = F.linear(h, weight).float().sub_(lse[s : s + ctx.chunk, None]).exp_()  # softmax, in place
                g.scatter_add_(1, t.clamp(min=0)[:, None], g.new_full((t.shape[0], 1), -1.0))
                g *= torch.where(t == ctx.ignore_index, 0.0, grad_loss[s : s + ctx.chunk])[:, None]
                g = g.to(hidden.dtype)  # as autograd would cast it back through `.float()`
                if need_h:
                    grad_h[s : s + ctx.chunk] = g @ weight
                if need_w and g.dtype == torch.float32:
                    grad_w.addmm_(g.t(), h)  # in place: no [vocab, d] temporary
                elif need_w:
                    grad_w += g.t() @ h  # bf16 product, summed in fp32
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


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


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 3407,
                prepare: Callable[[Llama], object] | None = None) -> Llama:
    """The one way a model is made: built on the meta device (no wasted default init), then
    `prepare(model)` while it is still there (the trainer's `parallelize`: compile, activation
    checkpointing, FSDP), materialised on `device`, and initialised from `seed`, or with
    `seed=None` left for the caller to load (only the RoPE buffers are filled)."""
    with torch.device("meta"):
        model = Llama(cfg)
    if prepare is not None:
        prepare(model)
    model.to_empty(device=device)
    if seed is None:
        model.init_rope()
    else:
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
