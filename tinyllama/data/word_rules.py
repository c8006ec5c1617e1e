"""The English word rules the heuristic filters (`gopher_quality`, `gopher_repetition`, `c4`,
`fineweb`) split words and sentences with, read from the installed spaCy and datatrove.

datatrove splits English with spaCy's blank `en` tokenizer and sentencizer; the Rust filters
port that algorithm (rust/filter/heuristics/words.rs) but not its rules, which belong to spaCy
(prefix / suffix / infix / URL regexes, tokenizer exceptions, sentence punctuation) and to
datatrove (its punctuation sets). `ensure()` writes them, with Python's own character
predicates, into a cache folder keyed by the spaCy and datatrove versions (once; atomically,
so concurrent builds agree) and loads them into the Rust core. Nothing is downloaded: the
blank English tokenizer needs no model. Without spaCy and datatrove installed (the `filters`
extra), a spec naming one of these filters is one line saying so.

    python -m tinyllama.data.word_rules     # prints the folder (the Rust tests read it from
                                            # $TINYLLAMA_WORD_RULES)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from tinyllama.errors import SpecError

HEURISTICS = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
_FORMAT = 1  # bump when what is written changes


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinyllama" / "word-rules"


def _modules():
    try:
        import datatrove.utils.text as dt_text
        import spacy
        from spacy.pipeline import Sentencizer
    except ImportError as e:
        raise SpecError(
            f"the heuristic filters ({', '.join(HEURISTICS)}) split words as datatrove does, with spaCy's English "
            f"rules read from the installed spaCy and datatrove, and {e.name} is not installed: "
            "pip install 'tinyllama-forge[filters]'") from None
    import datatrove

    return spacy, Sentencizer, dt_text, getattr(datatrove, "__version__", None) or _dist_version("datatrove")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _rustify(pattern: str) -> str:
    """Python's `\\uXXXX` / `\\UXXXXXXXX` escapes as the regex crate's `\\x{...}`."""
    pattern = re.sub(r"\\U([0-9A-Fa-f]{8})", lambda m: "\\x{" + m.group(1) + "}", pattern)
    return re.sub(r"\\u([0-9A-Fa-f]{4})", lambda m: "\\x{" + m.group(1) + "}", pattern)


def _ranges(pred) -> list[list[int]]:
    out, start = [], None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append([start, cp - 1])
            start = None
    return out


def write(folder: Path) -> None:
    """Write the rules into `folder` (the files rust/filter/heuristics/words.rs `load` reads)."""
    spacy, Sentencizer, dt_text, _ = _modules()
    tok = spacy.blank("en").tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    for name, fn in [("prefix", tok.prefix_search), ("suffix", tok.suffix_search),
                     ("infix", tok.infix_finditer), ("url", tok.url_match)]:
        if fn.__self__.flags != re.UNICODE:
            raise SpecError(f"spaCy {spacy.__version__}: its {name} rule has flags the Rust port does not know")
        (folder / f"{name}.re").write_text(_rustify(fn.__self__.pattern), encoding="utf-8")
    if tok.token_match is not None:
        raise SpecError(f"spaCy {spacy.__version__}: a token_match rule, which the Rust port does not know")
    with open(folder / "specials.jsonl", "w", encoding="utf-8") as f:
        for key, pieces in sorted(tok.rules.items()):
            orths = [p[65] for p in pieces]  # 65 = spaCy's ORTH attribute id
            f.write(json.dumps([key, orths], ensure_ascii=False) + "\n")
    (folder / "punct_chars.json").write_text(json.dumps(sorted(Sentencizer.default_punct_chars), ensure_ascii=False),
                                             encoding="utf-8")
    tables = {
        "isspace": _ranges(str.isspace),
        "isalpha": _ranges(str.isalpha),
        "category_p": _ranges(lambda c: unicodedata.category(c).startswith("P")),
        "datatrove_punctuation": _ranges(lambda c: c in dt_text.PUNCTUATION_SET),
        "datatrove_terminal_punctuation": sorted(dt_text.TERMINAL_PUNCTUATION),
    }
    (folder / "tables.json").write_text(json.dumps(tables, ensure_ascii=False), encoding="utf-8")


def folder() -> Path:
    """The rules of the installed spaCy and datatrove, written once into the cache."""
    spacy, _, _, dt_version = _modules()
    import sys

    key = f"v{_FORMAT}-spacy-{spacy.__version__}-datatrove-{dt_version}-py{sys.version_info[0]}.{sys.version_info[1]}"
    target = cache_root() / key
    if (target / "tables.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    write(tmp)
    try:
        os.rename(tmp, target)  # atomic; a concurrent writer may have won: its rules are the same
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure() -> str:
    """Load the rules into the Rust core (once per process); returns their digest."""
    from tinyllama import _core

    return _core.load_word_rules(str(folder()))


def needed(filter_names) -> bool:
    return any(name in HEURISTICS for name in filter_names)


if __name__ == "__main__":
    print(folder())
