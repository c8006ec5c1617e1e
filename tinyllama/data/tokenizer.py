"""`tinyllama.Tokenizer`: the Rust encoder behind a small Python face."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tinyllama import _core


class Tokenizer:
    """A Hugging Face ``tokenizer.json`` encoded by the Rust core.

    ``encode_batch`` gives ids identical to ``tokenizers.Tokenizer.encode_batch`` on the same
    file, as ``uint32`` numpy arrays, encoded in parallel with the GIL released.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._core = _core.Tokenizer(self.path)

    @property
    def sha256(self) -> str:
        """sha256 of the tokenizer.json bytes (the fingerprint stored in every shard)."""
        return self._core.sha256

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    def special_ids(self) -> tuple[int | None, int | None, int | None]:
        """(bos, eos, unk) ids, each None when the tokenizer has none. Decided by the Rust core
        (the ids a build writes around documents): the one place that knows them."""
        return self._core.special_ids()

    @property
    def bos_id(self) -> int | None:
        return self.special_ids()[0]

    @property
    def eos_id(self) -> int | None:
        return self.special_ids()[1]

    def token_to_id(self, token: str) -> int | None:
        return self._core.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
        return self._core.encode(text, add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[np.ndarray]:
        return self._core.encode_batch(list(texts), add_special_tokens)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self._core.decode([int(i) for i in ids], skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def read_tokenizer_json(path: str | os.PathLike[str]) -> bytes:
    """The tokenizer.json bytes of a tokenizer file, decompressed when it is zstd (by its magic
    number, whatever its name): the same reader the build uses to copy it into a mix."""
    return _core.read_tokenizer_json(os.fspath(path))
