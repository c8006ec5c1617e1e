"""Builds `continuation.jsonl`, the multiple-choice task of `continuation.yaml`, from the slice.

Two corpora of the committed slice (English web text, Chinese web text) are built into a mix
that holds out the last documents of each (`holdout_docs`). Each held-out document gives one
item: its first CONTEXT tokens are the question, and the choices are the next CONT tokens of it
(the answer) and of the held-out document at the same index in the other corpus. The two
documents at index i give two items with the same two choices (in corpus order) and different
answers, so any scorer that ignores the context (an untrained model, a unigram model) is right
exactly once per pair: chance is exactly 1/2. A model that reads the context picks the
continuation that goes on in the same language. The documents are the
held-out ones, so a model trained on the mix's training documents has never seen them.

    python python/tests/data/harness/make_task.py [OUT.jsonl]   # (re)writes the committed file

The test rebuilds the file and compares it with the committed one byte for byte.
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
CORPORA = DATA / "corpora"
TOKENIZER_ZST = DATA / "tokenizers/llama2/tokenizer.json.zst"

HOLDOUT = 50
CONTEXT = 32  # tokens of the question
CONT = 4  # tokens of each choice: few, so that what tells them apart is how they follow the context
NAMES = ("slimpajama", "skypile")


def spec_text(holdout: int = HOLDOUT) -> str:
    """The mix spec over the slice: the test trains on its training documents."""
    return textwrap.dedent(
        f"""
        name = "harness-task"
        seed = 7
        seq_len = 64
        tokenizer = "{TOKENIZER_ZST}"
        shard_tokens = "50K"

        [corpora.slimpajama]
        paths = ["{CORPORA}/slimpajama/train/**/*.jsonl.zst"]
        exclude = {{ "meta.redpajama_set_name" = ["RedPajamaGithub"] }}
        dedup = "none"
        holdout_docs = {holdout}

        [corpora.skypile]
        paths = ["{CORPORA}/skypile/2023-01.jsonl"]  # 2023-04 holds one-line proverbs
        dedup = "none"
        holdout_docs = {holdout}

        [[stages]]
        name = "basic"
        tokens = "1M"
        batch_tokens = "4096"  # 64 sequences of 64 tokens
        weights = {{ slimpajama = 0.5, skypile = 0.5 }}
        """
    )


def build_task_mix(out: Path) -> Path:
    from tinyllama.data.build import build_mix

    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.toml").write_text(spec_text())
    build_mix(out / "spec.toml", out / "mix", 1, progress=False)
    return out / "mix"


def _clean_prefix(tok, ids: list[int], n: int) -> tuple[str, int] | None:
    for k in range(n, min(n + 4, len(ids) + 1)):
        text = tok.decode(ids[:k])
        if "\ufffd" not in text:
            return text, k
    return None


def items(mix_dir: Path) -> list[dict]:
    import tinyllama

    mix = tinyllama.Mix(mix_dir)
    tok = tinyllama.Tokenizer(mix.tokenizer_path)
    parts: dict[str, list[tuple[str, str]]] = {}
    for name in NAMES:
        pairs = []
        for doc in mix.documents(name, holdout=True):
            ids = [int(t) for t in doc if int(t) not in (1, 2)]  # BOS / EOS as built
            # Decode whole prefixes and cut the text (decoding the continuation alone would lose
            # the space its first piece starts with); move each cut by up to 3 tokens so that
            # it does not split a character made of byte-fallback tokens.
            ctx = _clean_prefix(tok, ids, CONTEXT)
            if ctx is None:
                continue
            full = _clean_prefix(tok, ids, ctx[1] + CONT)
            if full is None or not full[0].startswith(ctx[0]) or not full[0][len(ctx[0]):].strip():
                continue
            pairs.append((ctx[0], full[0][len(ctx[0]):]))
        parts[name] = pairs
    n = min(len(p) for p in parts.values())
    out = []
    for i in range(n):
        choices = [parts[name][i][1] for name in NAMES]
        for label, name in enumerate(NAMES):
            out.append({"id": f"{name}-{i}", "corpus": name, "context": parts[name][i][0], "choices": choices,
                        "label": label})
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else HERE / "continuation.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        rows = items(build_task_mix(Path(tmp)))
    write_jsonl(rows, out)
    print(f"{out}: {len(rows)} items")


if __name__ == "__main__":
    main(sys.argv[1:])
