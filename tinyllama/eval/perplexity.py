"""`tinyllama eval`: perplexity per corpus on the documents the mix build held out.

Each held-out document (BOS ... EOS, as built) is scored on its own, cut into consecutive
non-overlapping windows of `seq_len` predicted tokens: window w feeds tokens
[w*L, w*L + L) and scores the next token of each, so every token after the first is predicted
exactly once, with up to L tokens of context from its own document and nothing from others.
`seq_len` defaults to the mix's sequence length (what the model was trained on), capped by the
model's max_seq_len.

Perplexity = exp(total negative log-likelihood / predicted tokens), per corpus and over all.

Document masking (`run.document_masking`) changes nothing here: a window holds one document
(BOS only at its position 0, the EOS only ever a target), so plain causal attention with
positions from 0 is what a masked model computes for it; and a document's first token is not
predicted, as the masked trainer does not score a border's target.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinyllama.errors import SpecError


def _windows(doc: np.ndarray, L: int):
    ids = doc.astype(np.int64)
    for start in range(0, len(ids) - 1, L):
        chunk = ids[start : start + L + 1]
        yield chunk[:-1], chunk[1:]


def _batches(pairs: list[tuple[np.ndarray, np.ndarray]], batch_size: int) -> list[list]:
    """The (input, target) windows grouped into batches of equal length, in a fixed order."""
    by_len: dict[int, list] = {}
    for x, y in pairs:
        by_len.setdefault(len(x), []).append((x, y))
    return [group[i : i + batch_size] for _, group in sorted(by_len.items()) for i in range(0, len(group), batch_size)]


@torch.no_grad()
def _batch_nll(model, part: list, device) -> tuple[float, int]:
    x = torch.from_numpy(np.stack([p[0] for p in part])).to(device)
    y = torch.from_numpy(np.stack([p[1] for p in part])).to(device)
    logits = model(x).float()
    return float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()), y.numel()


def evaluate(
    model,
    mix,
    corpora: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_docs: int | None = None,
    rank: int = 0,
    world: int = 1,
    all_reduce_sum=None,
) -> dict:
    """Perplexity of `model` (a `Llama`) on the held-out documents of `mix` (a `tinyllama.Mix`,
    anything with its `documents(corpus, holdout=True)` / `corpora` / `seq_len` / `lock`, or a
    mix path). Returns {"seq_len", "corpora": {name: {docs, tokens, nll, perplexity}}, "all"}.

    Sharded (the trainer's `run.eval_every`): every rank builds the same batch list, rank r
    scores batches r, r + world, ...; a rank with one batch fewer scores a padding batch and
    drops it (under FSDP every forward is collective: all ranks run the same number); the
    per-corpus (nll, tokens) sums are then summed over the ranks with `all_reduce_sum`
    (a float64 tensor in, the sum out). world = 1 is `tinyllama eval`: the same windows, the
    same batches, the same reduction."""
    import tinyllama

    if isinstance(mix, (str, os.PathLike)):
        mix = tinyllama.Mix(mix)
    max_len = model.config.max_seq_len
    L = seq_len or min(mix.seq_len, max_len)
    if not 0 < L <= max_len:
        raise SpecError(f"--seq-len must be in [1, {max_len}] (the model's max_seq_len), got {L}")
    vocab = model.config.vocab_size
    lock = getattr(mix, "lock", None) or {}
    if int(lock.get("vocab_size", 0)) > vocab:
        raise SpecError(f"{mix.path}: the mix's tokenizer has {lock['vocab_size']} ids, the model only {vocab}")
    names = list(corpora) if corpora else list(mix.corpora)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ndocs, batches = {}, []  # batches: (corpus index, batch)
    for ci, name in enumerate(names):
        pairs = []
        ndocs[name] = 0
        for doc in mix.documents(name, holdout=True):
            if max_docs is not None and ndocs[name] >= max_docs:
                break
            ndocs[name] += 1
            pairs.extend(_windows(doc, L))
        batches += [(ci, b) for b in _batches(pairs, batch_size)]
    sums = torch.zeros(len(names), 2, dtype=torch.float64)
    rounds = -(-len(batches) // world)
    for i in range(rounds):
        k = i * world + rank
        ci, part = batches[k] if k < len(batches) else (None, batches[0][1])  # padding: same forward count
        nll, n = _batch_nll(model, part, device)
        if ci is not None:
            sums[ci, 0] += nll
            sums[ci, 1] += n
    if world > 1:
        sums = all_reduce_sum(sums.to(device)).cpu()
    if was_training:
        model.train()
    out: dict = {"seq_len": L, "corpora": {}}
    for ci, name in enumerate(names):
        nll, n = float(sums[ci, 0]), int(sums[ci, 1])
        out["corpora"][name] = {
            "docs": ndocs[name],
            "tokens": n,
            "nll": nll / n if n else None,
            "perplexity": math.exp(nll / n) if n else None,
        }
    tot_nll, tot_n = float(sums[:, 0].sum()), int(sums[:, 1].sum())
    out["all"] = {
        "tokens": tot_n,
        "nll": tot_nll / tot_n if tot_n else None,
        "perplexity": math.exp(tot_nll / tot_n) if tot_n else None,
    }
    return out


def validation_record(result: dict) -> dict:
    """The metrics.jsonl / TensorBoard keys of an `evaluate` result: `val/loss/<corpus>` (mean
    NLL per predicted token) and `val/loss` (over all corpora's tokens)."""
    rec = {f"val/loss/{name}": r["nll"] for name, r in result["corpora"].items()}
    rec["val/loss"] = result["all"]["nll"]
    return rec


def format_table(result: dict) -> str:
    rows = [(name, r["docs"], r["tokens"], r["nll"], r["perplexity"]) for name, r in result["corpora"].items()]
    a = result["all"]
    rows.append(("all", sum(r[1] for r in rows), a["tokens"], a["nll"], a["perplexity"]))
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else f"{v:,}"

    cells = [[str(r[0])] + [fmt(v) for v in r[1:]] for r in rows]
    header = ["corpus", "docs", "tokens", "loss", "perplexity"]
    widths = [max(len(c) for c in col) for col in zip(header, *cells)]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join(
        [f"held-out perplexity (windows of {result['seq_len']} tokens)", line(header), line(["-" * w for w in widths])]
        + [line(r) for r in cells]
    )


def eval_main(
    path: str | os.PathLike[str],
    mix: str | os.PathLike[str],
    as_json: bool = False,
    corpora: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> str:
    """CLI entry: `tinyllama eval CKPT_OR_DIR --mix DIR [--json]`; returns the text to print."""
    from tinyllama.hf import load_model

    result = evaluate(load_model(path, device), Path(mix), corpora, seq_len, batch_size)
    return json.dumps(result, indent=2) if as_json else format_table(result)
