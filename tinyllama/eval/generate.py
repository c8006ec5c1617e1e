"""`tinyllama generate`: text from a checkpoint or a Hugging Face dir.

Sampling follows `transformers` (the model card's `do_sample=True, temperature=0.7, top_k=50,
top_p=0.95` example), in its order: repetition penalty -> temperature -> top-k -> top-p, then a
draw from a `torch.Generator` seeded by `seed`, so the same call gives the same text.
`temperature=0` is greedy decoding.

Decoding uses a KV cache: the prompt is run once, then each new token attends to the cached keys
and values (`_forward_cached` reuses the model's own modules; a test checks it against the plain
forward and against `transformers`). Generation stops at EOS or at the model's max_seq_len.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyllama.model import Llama, apply_rope


@dataclass
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 0.95  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off (CTRL's penalty, as in transformers)
    seed: int = 0

    def validate(self) -> None:
        from tinyllama.errors import SpecError

        if self.max_new_tokens < 0:
            raise SpecError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SpecError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SpecError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpecError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise SpecError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")


def process_logits(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The sampling distribution's logits for one step. logits [V] float; seen: the ids so far
    (prompt included). Filtered-out tokens get -inf. Greedy (temperature 0) skips the warpers."""
    logits = logits.float().clone()
    if s.repetition_penalty != 1.0 and seen.numel():
        prev = torch.unique(seen)
        score = logits[prev]
        logits[prev] = torch.where(score < 0, score * s.repetition_penalty, score / s.repetition_penalty)
    if s.temperature == 0:
        return logits
    logits = logits / s.temperature
    if s.top_k > 0 and s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly better tokens
        drop = mass_before >= s.top_p
        drop[0] = False  # always keep the best token
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def _forward_cached(model: Llama, ids: torch.Tensor, cache: list, start: int) -> torch.Tensor:
    """Logits of the last position for `ids` [B, T] at positions start..start+T-1, attending to
    the cached keys/values of positions < start; appends this step's keys/values to `cache`."""
    B, T = ids.shape
    x = model.embed_tokens(ids)
    cos = model.rope_cos[start : start + T].to(x.dtype)
    sin = model.rope_sin[start : start + T].to(x.dtype)
    q_pos = torch.arange(start, start + T, device=ids.device)
    k_pos = torch.arange(start + T, device=ids.device)
    mask = k_pos[None, :] <= q_pos[:, None]  # [T, start + T]: causal over the whole context
    for i, block in enumerate(model.layers):
        a = block.self_attn
        h = block.input_layernorm(x)
        H, KV = a.n_head, a.n_kv_head
        qkv = a.qkv_proj(h).view(B, T, H + 2 * KV, a.head_dim)  # same fused layout as Attention
        qk = apply_rope(qkv[:, :, : H + KV], cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV :]))
        if i < len(cache):
            k = torch.cat((cache[i][0], k), dim=2)
            v = torch.cat((cache[i][1], v), dim=2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        rep = a.n_head // a.n_kv_head
        kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)
        x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.head_dim))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x[:, -1:]))[:, -1]


@torch.no_grad()
def generate_ids(
    model: Llama,
    prompt_ids: list[int],
    sampling: Sampling | None = None,
    eos_id: int | None = 2,
    use_cache: bool = True,
) -> list[int]:
    """The new token ids after `prompt_ids` (which should start with BOS), EOS included if
    reached. `use_cache=False` recomputes the whole sequence every step (the reference)."""
    s = sampling or Sampling()
    s.validate()
    from tinyllama.errors import SpecError

    if not prompt_ids:
        raise SpecError("--prompt: empty prompt (and no BOS token to start from)")
    max_len = model.config.max_seq_len
    if len(prompt_ids) >= max_len:
        raise SpecError(f"--prompt: {len(prompt_ids)} tokens, the model's max_seq_len is {max_len}")
    model.eval()
    device = model.embed_tokens.weight.device
    seq = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    cache: list = []
    out: list[int] = []
    pos = 0
    for _ in range(min(s.max_new_tokens, max_len - len(prompt_ids))):
        if use_cache:
            logits = _forward_cached(model, seq[:, pos:], cache, pos)[0]
            pos = seq.shape[1]
        else:
            logits = model(seq)[0, -1]
        logits = process_logits(logits, seq[0], s)
        if s.temperature == 0:
            nxt = int(torch.argmax(logits))
        else:
            nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        out.append(nxt)
        seq = torch.cat((seq, torch.tensor([[nxt]], device=device)), dim=1)
        if eos_id is not None and nxt == eos_id:
            break
    return out


def generate(
    path: str | os.PathLike[str],
    prompt: str,
    sampling: Sampling | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> str:
    """Load a checkpoint / HF dir, continue `prompt`, return prompt + continuation as text."""
    from tinyllama.data.tokenizer import Tokenizer
    from tinyllama.errors import InputError
    from tinyllama.hf import find_tokenizer, load_model

    tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(path)
    if tok_path is None or not tok_path.is_file():
        raise InputError(f"{path}: cannot find the tokenizer: pass --tokenizer PATH")
    tok = Tokenizer(tok_path)
    model = load_model(path, device)
    bos, eos, _ = tok.special_ids()  # decided by the Rust core, as the build does
    ids = ([bos] if bos is not None else []) + tok.encode(prompt).tolist()
    new = generate_ids(model, ids, sampling, eos_id=eos)
    return prompt + _continuation(tok, ids, new)


def _continuation(tok, prompt_ids: list[int], new: list[int]) -> str:
    """Decode the new tokens in context: SentencePiece-style tokenizers drop a word's leading
    space when it is decoded alone, so decode prompt + new and strip the prompt's text."""
    full = tok.decode(prompt_ids + new)
    head = tok.decode(prompt_ids)
    return full[len(head) :] if full.startswith(head) else tok.decode(new)


def generate_main(
    path: str,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    tokenizer: str | None = None,
    device: str = "cpu",
) -> str:
    """CLI entry: `tinyllama generate CKPT_OR_DIR --prompt ...`; returns the text to print."""
    s = Sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    return generate(path, prompt, s, tokenizer, device)
