"""`tinyllama eval`: perplexity per corpus on the documents the mix build held out.

Each held-out document (BOS ... EOS, as built) is scored on its own, cut into consecutive
non-overlapping windows of `seq_len` predicted tokens: window w feeds tokens
[w*L, w*L + L) and scores the next token of each, so every token after the first is predicted
exactly once, with up to L tokens of context from its own document and nothing from others.
`seq_len` defaults to the mix's sequence length (what the model was trained on), capped by the
model's max_seq_len.

Perplexity = exp(total negative log-likelihood / predicted tokens), per corpus and over all
(`all`: every held-out token counts once, so a corpus weighs by its tokens), and `mean`: the
unweighted mean of the corpora's losses (perplexity exp of it), where each corpus counts once.

`tinyllama eval RUN RUN... --mix DIR` prints one table, a row per run (its path and checkpoint
step), a loss and a perplexity column per corpus, then `all` and `mean`; `--json` one JSON
list of the runs' results (each naming its path); `--out FILE` appends a row per run (.csv, or
JSON lines otherwise).

Document masking (`run.document_masking`) changes nothing here: a window holds one document
(BOS only at its position 0, the EOS only ever a target), so plain causal attention with
positions from 0 is what a masked model computes for it; and a document's first token is not
predicted, as the masked trainer does not score a border's target.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinyllama.errors import InputError, SpecError


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
    losses = [r["nll"] for r in out["corpora"].values() if r["nll"] is not None]
    mean = sum(losses) / len(losses) if losses else None
    out["mean"] = {"corpora": len(losses), "nll": mean, "perplexity": math.exp(mean) if losses else None}
    return out


def validation_record(result: dict) -> dict:
    """The metrics.jsonl / TensorBoard keys of an `evaluate` result: `val/loss/<corpus>` (mean
    NLL per predicted token) and `val/loss` (over all corpora's tokens)."""
    rec = {f"val/loss/{name}": r["nll"] for name, r in result["corpora"].items()}
    rec["val/loss"] = result["all"]["nll"]
    return rec


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else f"{v:,}"


def format_table(result: dict) -> str:
    """One run's result, a row per corpus, then `all` (token-weighted) and `mean` (unweighted)."""
    rows = [(name, r["docs"], r["tokens"], r["nll"], r["perplexity"]) for name, r in result["corpora"].items()]
    a = result["all"]
    m = result.get("mean") or {}
    rows.append(("all (token-weighted)", sum(r[1] for r in rows), a["tokens"], a["nll"], a["perplexity"]))
    rows.append(("mean (unweighted)", None, None, m.get("nll"), m.get("perplexity")))

    cells = [[str(r[0])] + [_fmt(v) for v in r[1:]] for r in rows]
    header = ["corpus", "docs", "tokens", "loss", "perplexity"]
    widths = [max(len(c) for c in col) for col in zip(header, *cells)]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join(
        [f"held-out perplexity (windows of {result['seq_len']} tokens; all = over every held-out token, so "
         f"corpora weigh by their tokens; mean = unweighted mean of the corpora's losses)",
         line(header), line(["-" * w for w in widths])]
        + [line(r) for r in cells]
    )


# ---- several runs: one table ------------------------------------------------------------------


def run_info(path: str | os.PathLike[str]) -> dict:
    """What names a run in the table: its path as given, the checkpoint it resolves to and that
    checkpoint's step and trained tokens (None for a Hugging Face dir)."""
    from tinyllama.hf import is_hf_dir, resolve_checkpoint, trainer_state

    if is_hf_dir(path):
        return {"path": str(path), "checkpoint": str(path), "step": None, "trained_tokens": None}
    ckpt = resolve_checkpoint(path)
    state = trainer_state(ckpt)
    step = state.get("step")
    if step is None and re.fullmatch(r"step-\d+", ckpt.name):
        step = int(ckpt.name[5:])
    tokens = state.get("tokens")
    return {"path": str(path), "checkpoint": str(ckpt), "step": None if step is None else int(step),
            "trained_tokens": None if tokens is None else int(tokens)}


def eval_runs(
    paths: Sequence[str | os.PathLike[str]],
    mix,
    corpora: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[dict]:
    """`evaluate` each run (a checkpoint, a run dir or a Hugging Face dir) on the held-out
    documents of `mix` (a path or a `tinyllama.Mix`, opened once): one result per run, in
    order, each naming it (`run_info`) and its mix."""
    import tinyllama
    from tinyllama.hf import load_model

    if isinstance(mix, (str, os.PathLike)):
        mix = tinyllama.Mix(mix)
    results = []
    for path in paths:
        info = run_info(path)
        model = load_model(path, device)
        results.append({**info, "mix": str(mix.path), **evaluate(model, mix, corpora, seq_len, batch_size)})
        del model
    return results


def format_runs(results: Sequence[dict]) -> str:
    """One table: a row per run (its path and checkpoint step), a loss and a perplexity column
    per corpus, then `all` (token-weighted) and `mean` (unweighted over the corpora)."""
    names = list(results[0]["corpora"])
    windows = sorted({r["seq_len"] for r in results})
    groups = [(n, lambda r, n=n: r["corpora"][n]) for n in names]
    groups += [("all (token-weighted)", lambda r: r["all"]), ("mean (unweighted)", lambda r: r["mean"])]
    lead = ["run", "step"] + (["window"] if len(windows) > 1 else [])
    rows = []
    for r in results:
        cells = [r["path"], _fmt(r["step"])] + ([_fmt(r["seq_len"])] if len(windows) > 1 else [])
        for _, get in groups:
            ppl = get(r)["perplexity"]
            cells += [_fmt(get(r)["nll"]), "-" if ppl is None else f"{ppl:,.2f}"]
        rows.append(cells)
    sub = lead + ["loss", "ppl"] * len(groups)
    widths = [max(len(c) for c in col) for col in zip(sub, *rows)]
    for g, (label, _) in enumerate(groups):  # a group's label spans its two columns
        i = len(lead) + 2 * g
        short = len(label) - (widths[i] + 2 + widths[i + 1])
        if short > 0:
            widths[i + 1] += short
    lead_w = widths[: len(lead)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    top = "  ".join([c.ljust(w) for c, w in zip([""] * len(lead), lead_w)]
                    + [label.ljust(widths[len(lead) + 2 * g] + 2 + widths[len(lead) + 2 * g + 1])
                       for g, (label, _) in enumerate(groups)]).rstrip()
    first = results[0]
    held = ", ".join(f"{n} {first['corpora'][n]['tokens']:,}" for n in names)
    window = f"windows of {windows[0]} tokens" if len(windows) == 1 else "windows per run"
    return "\n".join([
        f"held-out loss and perplexity per corpus ({window}; mix {first['mix']})",
        f"all: over every held-out token, so corpora weigh by their tokens ({held}); "
        + (f"mean: unweighted mean of the {len(names)} corpora's losses (ppl = exp of it)" if len(names) > 1
           else "mean: the one corpus's loss"),
        top, line(sub), line(["-" * w for w in widths]),
    ] + [line(r) for r in rows])


def row_columns(corpora: Sequence[str]) -> list[str]:
    """The columns of a `--out` CSV row for these corpora."""
    cols = ["path", "checkpoint", "step", "trained_tokens", "mix", "seq_len"]
    for n in corpora:
        cols += [f"{n}_loss", f"{n}_perplexity", f"{n}_tokens"]
    return cols + ["all_loss", "all_perplexity", "all_tokens", "mean_loss", "mean_perplexity"]


def flat_row(result: dict) -> dict:
    row = {k: result[k] for k in ("path", "checkpoint", "step", "trained_tokens", "mix", "seq_len")}
    for n, r in result["corpora"].items():
        row.update({f"{n}_loss": r["nll"], f"{n}_perplexity": r["perplexity"], f"{n}_tokens": r["tokens"]})
    a, m = result["all"], result["mean"]
    row.update({"all_loss": a["nll"], "all_perplexity": a["perplexity"], "all_tokens": a["tokens"],
                "mean_loss": m["nll"], "mean_perplexity": m["perplexity"]})
    return row


def check_out(out: str | os.PathLike[str], corpora: Sequence[str]) -> None:
    """Before any work: an existing CSV `out` must have the columns these corpora give."""
    out = Path(out)
    if out.suffix != ".csv" or not out.is_file() or out.stat().st_size == 0:
        return
    with open(out, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    want = row_columns(corpora)
    if header != want:
        raise InputError(f"{out}: --out has the columns {header}, this evaluation's are {want}: "
                         "choose another file")


def append_rows(results: Sequence[dict], out: str | os.PathLike[str]) -> Path:
    """Append a row per run to `out`: a .csv (header written once; columns must match) or a
    JSON-lines file (one result object per line)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        cols = row_columns(list(results[0]["corpora"]))
        check_out(out, list(results[0]["corpora"]))
        exists = out.is_file() and out.stat().st_size > 0
        with open(out, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            if not exists:
                w.writeheader()
            for r in results:
                w.writerow({k: "" if v is None else v for k, v in flat_row(r).items()})
    else:
        with open(out, "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return out


def eval_main(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    mix: str | os.PathLike[str],
    as_json: bool = False,
    corpora: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    out: str | os.PathLike[str] | None = None,
) -> str:
    """CLI entry: `tinyllama eval RUN [RUN...] --mix DIR [--json] [--out FILE]`; returns the
    text to print: one table (a row per run), or with `as_json` one JSON document: the list of
    the runs' results (for a single path, not in a list: that run's result). `out`: append a
    row per run (.csv, or JSON lines otherwise)."""
    import tinyllama

    one = isinstance(paths, (str, os.PathLike))
    paths = [paths] if one else list(paths)
    if not paths:
        raise SpecError("eval: no run to evaluate")
    mix = tinyllama.Mix(Path(mix))
    if out is not None:
        check_out(out, list(corpora) if corpora else list(mix.corpora))
    results = eval_runs(paths, mix, corpora, seq_len, batch_size, device)
    if out is not None:
        append_rows(results, out)
    if as_json:
        return json.dumps(results[0] if one else results, indent=2)
    return format_runs(results)
