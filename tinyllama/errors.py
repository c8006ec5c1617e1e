"""The exception hierarchy. Raised by the Rust core and by the Python layers alike.

TinyllamaError
├── InputError      a bad record in an input corpus file (names the file and line/row)
├── SpecError       an invalid spec or train config (names the key)
├── TokenizerError  a missing or unusable tokenizer
├── ShardError      a corrupt shard or manifest (names the shard)
└── StorageError    an OS-level read/write failure (names the path)
"""

from tinyllama._core import (
    InputError,
    ShardError,
    SpecError,
    StorageError,
    TinyllamaError,
    TokenizerError,
)

__all__ = ["InputError", "ShardError", "SpecError", "StorageError", "TinyllamaError", "TokenizerError"]
