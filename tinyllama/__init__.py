"""tinyllama: pretrain TinyLlama-class language models from raw corpora."""

from tinyllama._core import __version__
from tinyllama.errors import (
    InputError,
    ShardError,
    SpecError,
    StorageError,
    TinyllamaError,
    TokenizerError,
)
from tinyllama.mix import Mix
from tinyllama.tokenizer import Tokenizer

__all__ = [
    "InputError",
    "Mix",
    "ShardError",
    "SpecError",
    "StorageError",
    "TinyllamaError",
    "Tokenizer",
    "TokenizerError",
    "__version__",
]
