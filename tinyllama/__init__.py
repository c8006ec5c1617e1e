"""tinyllama: pretrain TinyLlama-class language models from raw corpora."""

from tinyllama._core import __version__
from tinyllama.data.mix import Mix
from tinyllama.data.tokenizer import Tokenizer
from tinyllama.errors import (
    InputError,
    ShardError,
    SpecError,
    StorageError,
    TinyllamaError,
    TokenizerError,
    UsageError,
)


def load_model(path):
    """A model from a training checkpoint dir or a Hugging Face dir (imports torch lazily)."""
    from tinyllama.hf import load_model as _load

    return _load(path)


__all__ = [
    "load_model",
    "InputError",
    "Mix",
    "ShardError",
    "SpecError",
    "StorageError",
    "TinyllamaError",
    "Tokenizer",
    "TokenizerError",
    "UsageError",
    "__version__",
]
