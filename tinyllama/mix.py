"""`tinyllama.Mix`: a built mix directory, read-only.

A mix dir holds `mix.json` (the lock: tokenizer fingerprint, seq_len, stages, corpora; written
last, so its presence means the build completed), `tokenizer.json`, and per corpus
`corpora/NAME/{manifest.json, shard-*.bin, holdout-*.bin, dedup_report.parquet}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tinyllama.errors import ShardError, SpecError
from tinyllama.shards import ShardView, open_shard

_INSPECT_KEYS = ("files", "docs_read", "docs_filtered", "docs_skipped", "exact_duplicates",
                 "near_duplicates", "docs_kept", "docs_holdout", "tokens", "holdout_tokens", "shards")


class Mix:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        lock = self.path / "mix.json"
        if not lock.is_file():
            staging = (self.path / ".staging").exists()
            why = "the build was interrupted; rerun `tinyllama mix build` to resume" if staging else (
                "build one with `tinyllama mix build --spec FILE`")
            raise SpecError(f"{self.path}: not a built mix (no mix.json): {why}")
        self.lock: dict[str, Any] = json.loads(lock.read_text())
        self._manifests: dict[str, dict] = {}

    # -- metadata --------------------------------------------------------------------------

    @property
    def corpora(self) -> list[str]:
        return [c["name"] for c in self.lock["corpora"]]

    @property
    def seq_len(self) -> int:
        return int(self.lock["seq_len"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.lock["tokenizer"]

    def manifest(self, corpus: str) -> dict:
        if corpus not in self._manifests:
            self._check_corpus(corpus)
            path = self.path / "corpora" / corpus / "manifest.json"
            try:
                self._manifests[corpus] = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ShardError(f"{path}: unreadable manifest: {e}") from None
        return self._manifests[corpus]

    def _check_corpus(self, corpus: str) -> None:
        if corpus not in self.corpora:
            raise SpecError(f"{corpus!r}: no such corpus in {self.path}; it has {', '.join(self.corpora)}")

    def inspect(self) -> dict[str, Any]:
        """The object `tinyllama mix inspect --json` prints."""
        corpora = {}
        for name in self.corpora:
            totals = self.manifest(name)["totals"]
            corpora[name] = {k: totals[k] for k in _INSPECT_KEYS}
        return {
            "name": self.lock["name"],
            "seed": self.lock["seed"],
            "seq_len": self.seq_len,
            "tokenizer_sha256": self.lock["tokenizer_sha256"],
            "vocab_size": self.lock["vocab_size"],
            "dtype": self.lock["dtype"],
            "bos_id": self.lock["bos_id"],
            "eos_id": self.lock["eos_id"],
            "stages": self.lock["stages"],
            "corpora": corpora,
        }

    # -- documents -------------------------------------------------------------------------

    def shards(self, corpus: str, *, holdout: bool = False) -> list[ShardView]:
        entries = self.manifest(corpus)["holdout_shards" if holdout else "shards"]
        return [open_shard(self.path / "corpora" / corpus / e["name"]) for e in entries]

    def documents(self, corpus: str, *, holdout: bool = False) -> Iterator[np.ndarray]:
        """The kept documents' tokens (BOS/EOS included as built), in input order. Zero-copy
        views into the mmapped shards."""
        for shard in self.shards(corpus, holdout=holdout):
            yield from shard

    def document_sources(self, corpus: str, *, holdout: bool = False) -> Iterator[tuple[str, int]]:
        """(input file, row) of each document, parallel to `documents`."""
        files = [f["path"] for f in self.manifest(corpus)["files"]]
        for shard in self.shards(corpus, holdout=holdout):
            for file_index, row in shard.sources:
                yield files[int(file_index)], int(row)

    def verify(self) -> None:
        """Check every shard's checksum against its footer and the manifest."""
        from tinyllama.shards import verify

        for corpus in self.corpora:
            m = self.manifest(corpus)
            for entry in m["shards"] + m["holdout_shards"]:
                path = self.path / "corpora" / corpus / entry["name"]
                verify(path)

    def dedup_report(self, corpus: str):
        """polars.DataFrame of removed duplicates: source, row, kept_source, kept_row, kind, jaccard."""
        import polars as pl

        self._check_corpus(corpus)
        path = self.path / "corpora" / corpus / "dedup_report.parquet"
        if path.exists():
            return pl.read_parquet(path)
        return pl.DataFrame(
            schema={"source": pl.Utf8, "row": pl.UInt64, "kept_source": pl.Utf8, "kept_row": pl.UInt64,
                    "kind": pl.Utf8, "jaccard": pl.Float32}
        )

    def __repr__(self) -> str:
        return f"Mix({str(self.path)!r}, corpora={self.corpora})"
