"""Read token shards from Python with no copy: numpy views over an mmap.

The format is documented in `rust/shard/mod.rs` (footer-based, little-endian); this module is
its Python reader. Checksums (and token ids against a vocabulary) are verified by the Rust
core (`verify`), which reads every byte; `tinyllama.Mix.documents` does so for each shard the
first time it reaches it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyllama import _core
from tinyllama.errors import ShardError

MAGIC = b"TLSHARD1"
FOOTER_MAGIC = b"TLSHEND1"
FOOTER = struct.Struct("<IIQQ32sQ8s")  # version, width, n_docs, n_tokens, sha256, checksum, magic
VERSION = 1


@dataclass(frozen=True)
class ShardView:
    """One shard, mapped. `tokens` is a read-only view of the file; nothing is copied."""

    path: Path
    tokens: np.ndarray  # uint16 or uint32, all documents back to back
    offsets: np.ndarray  # uint64 [n_docs + 1]
    sources: np.ndarray  # uint64 [n_docs, 2]: (input file index, row)
    tokenizer_sha256: str

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_docs):
            yield self.doc(i)


def open_shard(path: str | os.PathLike[str]) -> ShardView:
    path = Path(path)
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ShardError(f"shard {path}: {e}") from None
    if len(buf) < 8 + FOOTER.size or bytes(buf[:8]) != MAGIC:
        raise ShardError(f"shard {path}: not a tinyllama shard (bad magic or truncated)")
    version, width, n_docs, n_tokens, sha, _checksum, magic = FOOTER.unpack(bytes(buf[-FOOTER.size :]))
    if magic != FOOTER_MAGIC or width not in (2, 4):
        raise ShardError(f"shard {path}: truncated or corrupt footer")
    if version != VERSION:
        raise ShardError(f"shard {path}: format version {version}, this build reads {VERSION}")
    token_bytes = n_tokens * width
    start_index = 8 + ((token_bytes + 7) & ~7)
    end = start_index + (n_docs + 1) * 8 + n_docs * 16
    if end + FOOTER.size != len(buf):
        raise ShardError(f"shard {path}: size does not match its footer: truncated or corrupt")
    dtype = np.uint16 if width == 2 else np.uint32
    tokens = buf[8 : 8 + token_bytes].view(dtype)
    offsets = buf[start_index : start_index + (n_docs + 1) * 8].view(np.uint64)
    sources = buf[start_index + (n_docs + 1) * 8 : end].view(np.uint64).reshape(n_docs, 2)
    return ShardView(path, tokens, offsets, sources, sha.hex())


def verify(path: str | os.PathLike[str], vocab_size: int | None = None, checksum: str | None = None) -> None:
    """Check structure and checksum (against `checksum`, the manifest's hex, when given) and,
    given `vocab_size`, every token id; raises `ShardError` naming the shard (and document)."""
    _core.verify_shard(os.fspath(path), vocab_size, checksum)
