"""The mix spec: a TOML file naming the corpora, the tokenizer, dedup and the training stages.

A *family* spec adds `[[branches.NAME.stages]]`: the top-level `[[stages]]` are the trunk, and
each branch continues it with its own stages (TinyLlama v1.1: one 1.5T-token SlimPajama trunk,
three continual-pretraining variants). Corpora are declared once and built once.

`load_spec(path)` parses and validates it with errors that name the key (`SpecError`), then
`MixSpec.build_config(out, workers)` resolves it into the JSON the Rust build consumes.
Paths in the spec are relative to the spec file; token counts take the suffixes K, M, B, T.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinyllama.errors import SpecError
from tinyllama.toml_schema import check_keys, read_toml

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BYTES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_count(value: Any, key: str, *, units: dict[str, int] = _SUFFIX) -> int:
    """`"1.5T"` -> 1_500_000_000_000 (decimal suffixes); plain ints pass through."""
    if isinstance(value, bool):
        raise SpecError(f"{key}: expected a count like 350B or 2048, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{key}: must be >= 0, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBGT]?)(i?B)?\s*", value.upper())
        if m:
            return int(round(float(m.group(1)) * units[m.group(2)]))
    raise SpecError(f"{key}: expected a count like 350B or 2048, got {value!r}")


def parse_bytes(value: Any, key: str) -> int:
    """`"64M"` -> 64 MiB (binary suffixes, for memory and document sizes)."""
    return parse_count(value, key, units=_BYTES)


@dataclass
class CorpusSpec:
    name: str
    paths: list[str]
    text: str = "text"
    exclude: dict[str, list[str]] = field(default_factory=dict)
    dedup: str = "none"
    on_error: str = "fail"
    holdout_docs: int = 0
    max_doc_bytes: int = 64 * 2**20
    # [corpora.NAME.filters]: filter name -> its settings table, in the order the chain applies them
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)


# The quality filters a corpus may name, in the order its chain applies them (rust/filter/mod.rs
# `ORDER`, less `decontaminate`, which is the top-level [decontaminate] table).
FILTERS = ("language", "gopher_quality", "gopher_repetition", "c4", "fineweb")


@dataclass
class DecontaminateSpec:
    """[decontaminate]: drop training documents sharing a normalised `ngram`-word n-gram with an
    item of the benchmark files `paths` (resolved against the spec's folder; globs allowed)."""
    paths: list[Path]
    ngram: int = 13


@dataclass
class DedupSpec:
    """MinHash-LSH parameters; the defaults are SlimPajama's."""

    ngram: int = 13
    permutations: int = 128
    bands: int = 9
    rows: int = 13
    threshold: float = 0.8
    memory: int = 2 * 2**30


@dataclass
class StageSpec:
    name: str
    tokens: int
    batch_tokens: int
    weights: dict[str, float]
    ramp_tokens: int = 0


@dataclass
class MixSpec:
    path: Path
    name: str
    tokenizer: Path
    corpora: dict[str, CorpusSpec]
    stages: list[StageSpec]
    seed: int = 3407
    seq_len: int = 2048
    out: Path | str | None = None  # a dir, or a bucket URL (s3://...)
    add_bos: bool = True
    add_eos: bool = True
    shard_tokens: int = 64 * 10**6
    dtype: str | None = None
    dedup: DedupSpec = field(default_factory=DedupSpec)
    decontaminate: DecontaminateSpec | None = None
    # a family's branches, in the spec's order: name -> the stages that follow the trunk's
    branches: dict[str, list[StageSpec]] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.path.parent

    def build_config(self, out: str | os.PathLike[str] | None = None, workers: int | None = None) -> dict:
        """The resolved config the Rust build consumes (absolute paths, integer counts)."""
        target = Path(out) if out is not None else self.out
        if target is None:
            raise SpecError("out: no output directory: set `out` in the spec or pass --out")
        return {
            "name": self.name,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "tokenizer": str(self.tokenizer),
            "out": str(Path(target).absolute()),
            "workers": workers or os.cpu_count() or 1,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "shard_tokens": self.shard_tokens,
            "dtype": self.dtype,
            "corpora": [
                {
                    "name": c.name,
                    "base": str(self.base.absolute()),
                    "paths": c.paths,
                    "text": c.text,
                    "exclude": sorted(c.exclude.items()),
                    "on_error": c.on_error,
                    "dedup": c.dedup,
                    "holdout_docs": c.holdout_docs,
                    "max_doc_bytes": c.max_doc_bytes,
                    **({"filters": [[name, settings] for name, settings in c.filters.items()]}
                       if c.filters else {}),
                }
                for c in self.corpora.values()
            ],
            **({"decontaminate": {"paths": [str(p) for p in self.decontaminate.paths],
                                  "ngram": self.decontaminate.ngram}}
               if self.decontaminate else {}),
            "dedup": asdict(self.dedup),
            "stages": [asdict(s) for s in self.stages],
            **({"branches": [{"name": name, "stages": [asdict(s) for s in stages]}
                             for name, stages in self.branches.items()]} if self.branches else {}),
        }


# ---------------------------------------------------------------------------------------------
# validation helpers: every error names the key path the user must fix


def _typed(table: dict, key: str, kind: type | tuple, where: str, default: Any = ..., required: bool = False):
    if key not in table:
        if required or default is ...:
            raise SpecError(f"{where}{key}: required key is missing")
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"{where}{key}: expected {names}, got {value!r}")
    return value


def _choice(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise SpecError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _corpus(name: str, table: Any) -> CorpusSpec:
    where = f"corpora.{name}."
    if not isinstance(table, dict):
        raise SpecError(f"corpora.{name}: expected a table")
    if not re.fullmatch(_NAME, name):
        raise SpecError(f"corpora.{name}: corpus names may use letters, digits, '_', '-', '.'")
    check_keys(table, {"paths", "text", "exclude", "dedup", "on_error", "holdout_docs", "max_doc_bytes", "filters"},
               where)
    paths = _typed(table, "paths", (list, str), where, required=True)
    paths = [paths] if isinstance(paths, str) else paths
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise SpecError(f"{where}paths: expected a non-empty list of glob patterns")
    exclude = _typed(table, "exclude", dict, where, {})
    clean: dict[str, list[str]] = {}
    for field_path, values in exclude.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SpecError(f"{where}exclude.{field_path}: expected a string or a list of strings")
        clean[field_path] = values
    holdout = _typed(table, "holdout_docs", int, where, 0)
    if holdout < 0:
        raise SpecError(f"{where}holdout_docs: must be >= 0")
    max_doc = parse_bytes(table.get("max_doc_bytes", 64 * 2**20), f"{where}max_doc_bytes")
    if max_doc <= 0:
        raise SpecError(f"{where}max_doc_bytes: must be > 0")
    return CorpusSpec(
        name=name,
        paths=paths,
        text=_typed(table, "text", str, where, "text"),
        exclude=clean,
        dedup=_choice(_typed(table, "dedup", str, where, "none"), ("none", "exact", "near"), f"{where}dedup"),
        on_error=_choice(_typed(table, "on_error", str, where, "fail"), ("fail", "skip"), f"{where}on_error"),
        holdout_docs=holdout,
        max_doc_bytes=max_doc,
        filters=_filters(table.get("filters", {}), where),
    )


def _filters(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """`[corpora.NAME.filters]`: known names, each a table of settings; returned in chain order.
    The settings themselves are checked by the Rust filters (unknown keys, types), here at once."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}filters: expected a table like {{ gopher_quality = {{}} }}")
    for name, settings in table.items():
        if name not in FILTERS:
            hint = " (it is the top-level [decontaminate] table)" if name == "decontaminate" else ""
            raise SpecError(f"{where}filters.{name}: unknown filter{hint}; known: {', '.join(FILTERS)}")
        if not isinstance(settings, dict):
            raise SpecError(f"{where}filters.{name}: expected a table of settings ({{}} for the defaults)")
    ordered = {name: table[name] for name in FILTERS if name in table}
    if ordered:
        import json

        from tinyllama import _core
        from tinyllama.data import word_rules

        if word_rules.needed(ordered):
            try:
                word_rules.ensure()
            except SpecError as e:
                raise SpecError(f"{where}filters: {e}") from None

        try:
            _core.filter_settings([(n, json.dumps(s)) for n, s in ordered.items()])
        except _core.SpecError as e:
            raise SpecError(f"{where}{str(e).removeprefix('spec: ')}") from None
    return ordered


def _decontaminate(table: Any, base: Path) -> DecontaminateSpec:
    if not isinstance(table, dict):
        raise SpecError("decontaminate: expected a table with `paths` (and `ngram`)")
    check_keys(table, {"paths", "ngram"}, "decontaminate.")
    patterns = _typed(table, "paths", (list, str), "decontaminate.", required=True)
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise SpecError("decontaminate.paths: expected a non-empty list of files or glob patterns")
    paths: list[Path] = []
    for pattern in patterns:
        found = sorted(base.glob(pattern)) if any(ch in pattern for ch in "*?[") else [base / pattern]
        if not found:
            raise SpecError(f"decontaminate.paths: {pattern!r} matches no file (relative to {base})")
        paths += [p.absolute() for p in found]
    ngram = _typed(table, "ngram", int, "decontaminate.", 13)
    if ngram < 1:
        raise SpecError(f"decontaminate.ngram: must be >= 1, got {ngram}")
    return DecontaminateSpec(paths=paths, ngram=ngram)


def _dedup(table: Any) -> DedupSpec:
    if not isinstance(table, dict):
        raise SpecError("dedup: expected a table")
    check_keys(table, {"ngram", "permutations", "bands", "rows", "threshold", "memory"}, "dedup.")
    d = DedupSpec()
    for key in ("ngram", "permutations", "bands", "rows"):
        value = _typed(table, key, int, "dedup.", getattr(d, key))
        if value < 1:
            raise SpecError(f"dedup.{key}: must be >= 1, got {value}")
        setattr(d, key, value)
    d.threshold = float(_typed(table, "threshold", (int, float), "dedup.", d.threshold))
    if not 0.0 < d.threshold <= 1.0:
        raise SpecError(f"dedup.threshold: must be in (0, 1], got {d.threshold}")
    if d.bands * d.rows > d.permutations:
        raise SpecError(
            f"dedup.bands: bands x rows = {d.bands * d.rows} exceeds permutations = {d.permutations}"
        )
    d.memory = parse_bytes(table.get("memory", d.memory), "dedup.memory")
    return d


def _stages(raw: Any, corpora: dict[str, CorpusSpec], seq_len: int, key: str = "stages",
            after: list[StageSpec] | None = None) -> list[StageSpec]:
    """`[[stages]]`, or with `after` (the trunk's) a branch's `[[branches.NAME.stages]]`: its
    first stage may ramp from the trunk's last weights, and its names must differ from the
    trunk's (the branch's whole schedule names every stage once)."""
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{key}: at least one [[{key}]] table is required")
    stages: list[StageSpec] = []
    seen: set[str] = {s.name for s in after or ()}
    for i, table in enumerate(raw):
        where = f"{key}[{i}]."
        if not isinstance(table, dict):
            raise SpecError(f"{key}[{i}]: expected a table")
        check_keys(table, {"name", "tokens", "batch_tokens", "weights", "ramp_tokens"}, where)
        name = _typed(table, "name", str, where, f"stage{i + len(after or ())}")
        if name in seen:
            raise SpecError(f"{where}name: stage name {name!r} is used twice"
                            + (" (the trunk has it)" if after and name in {s.name for s in after} else ""))
        seen.add(name)
        tokens = parse_count(_typed(table, "tokens", (int, str), where, required=True), f"{where}tokens")
        batch = parse_count(_typed(table, "batch_tokens", (int, str), where, required=True), f"{where}batch_tokens")
        ramp = parse_count(table.get("ramp_tokens", 0), f"{where}ramp_tokens")
        if tokens <= 0:
            raise SpecError(f"{where}tokens: must be > 0")
        if batch < seq_len:
            raise SpecError(f"{where}batch_tokens: {batch} is smaller than one sequence (seq_len = {seq_len})")
        if batch > tokens:
            raise SpecError(f"{where}batch_tokens: {batch} is larger than the stage ({tokens} tokens)")
        if ramp > tokens:
            raise SpecError(f"{where}ramp_tokens: {ramp} is longer than the stage ({tokens} tokens)")
        if ramp and i == 0 and not after:
            raise SpecError(f"{where}ramp_tokens: the first stage has no previous weights to ramp from")
        weights = _typed(table, "weights", dict, where, required=True)
        clean: dict[str, float] = {}
        for corpus, w in weights.items():
            if corpus not in corpora:
                raise SpecError(
                    f"{where}weights.{corpus}: unknown corpus; the spec defines {', '.join(corpora) or 'none'}"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w):
                raise SpecError(f"{where}weights.{corpus}: expected a number >= 0, got {w!r}")
            clean[corpus] = float(w)
        total = sum(clean.values())
        if abs(total - 1.0) > 1e-6:
            raise SpecError(f"{where}weights: sum to {total:g}, must sum to 1")
        stages.append(StageSpec(name=name, tokens=tokens, batch_tokens=batch, weights=clean, ramp_tokens=ramp))
    return stages


_TOP = {"name", "seed", "seq_len", "tokenizer", "out", "add_bos", "add_eos", "shard_tokens", "dtype",
        "corpora", "dedup", "stages", "decontaminate", "branches"}
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def _branches(raw: Any, corpora: dict[str, CorpusSpec], seq_len: int, trunk: list[StageSpec]
              ) -> dict[str, list[StageSpec]]:
    """`[branches.NAME]` tables, each with its `[[branches.NAME.stages]]` after the trunk's."""
    if not isinstance(raw, dict) or not raw:
        raise SpecError("branches: expected [[branches.NAME.stages]] tables (at least one branch)")
    out: dict[str, list[StageSpec]] = {}
    for name, table in raw.items():
        if not re.fullmatch(_NAME, name):
            raise SpecError(f"branches.{name}: branch names may use letters, digits, '_', '-', '.'")
        if not isinstance(table, dict):
            raise SpecError(f"branches.{name}: expected a table with [[branches.{name}.stages]]")
        check_keys(table, {"stages"}, f"branches.{name}.")
        out[name] = _stages(table.get("stages"), corpora, seq_len, f"branches.{name}.stages", after=trunk)
    return out


def load_spec(path: str | os.PathLike[str]) -> MixSpec:
    """Parse and validate a mix spec. Raises `SpecError` naming the file and the key."""
    path = Path(path)
    raw = read_toml(path, "spec file")
    try:
        return _parse(path, raw)
    except SpecError as e:
        # Internal messages read "a.b.c: what"; users get the train config's shape too.
        text = str(e)
        key, sep, msg = text.partition(": ")
        if sep and not text.startswith("key '"):
            text = f"key '{key}': {msg}"
        raise SpecError(f"{path}: {text}") from None


def _parse(path: Path, raw: dict) -> MixSpec:
    check_keys(raw, _TOP, "")
    base = path.parent
    seq_len = _typed(raw, "seq_len", int, "", 2048)
    if seq_len < 1:
        raise SpecError("seq_len: must be >= 1")
    corpora_raw = _typed(raw, "corpora", dict, "", required=True)
    if not corpora_raw:
        raise SpecError("corpora: at least one [corpora.NAME] table is required")
    corpora = {name: _corpus(name, t) for name, t in corpora_raw.items()}
    tokenizer = base / _typed(raw, "tokenizer", str, "", required=True)
    out = raw.get("out")
    dtype = _typed(raw, "dtype", str, "", None)
    if dtype is not None:
        _choice(dtype, ("u16", "u32"), "dtype")
    shard_tokens = parse_count(raw.get("shard_tokens", 64 * 10**6), "shard_tokens")
    if shard_tokens <= 0:
        raise SpecError("shard_tokens: must be > 0")
    stages = _stages(raw.get("stages"), corpora, seq_len)
    return MixSpec(
        path=path,
        name=_typed(raw, "name", str, "", path.stem),
        tokenizer=tokenizer,
        corpora=corpora,
        stages=stages,
        branches=_branches(raw["branches"], corpora, seq_len, stages) if "branches" in raw else {},
        seed=_typed(raw, "seed", int, "", 3407),
        seq_len=seq_len,
        out=(None if out is None else _typed(raw, "out", str, "") if "://" in str(out)  # a bucket URL
             else base / _typed(raw, "out", str, "")),
        add_bos=_typed(raw, "add_bos", bool, "", True),
        add_eos=_typed(raw, "add_eos", bool, "", True),
        shard_tokens=shard_tokens,
        dtype=dtype,
        dedup=_dedup(raw.get("dedup", {})),
        decontaminate=_decontaminate(raw["decontaminate"], base) if "decontaminate" in raw else None,
    )
