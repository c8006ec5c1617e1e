"""The exception hierarchy. Raised by the Rust core and by the Python layers alike.

TinyllamaError
├── InputError      a bad record in an input corpus file (names the file and line/row)
├── SpecError       an invalid spec or train config (names the key)
├── TokenizerError  a missing or unusable tokenizer
├── ShardError      a corrupt shard or manifest (names the shard)
├── StorageError    an OS-level read/write failure (names the path)
│   └── LockedError another process holds the output dir's lock (names the holder)
├── UsageError      an API called the wrong way: a build stage before `prepare`, a corpus or
│                   file index out of range, a step past the schedule, a rank outside the world
├── CheckpointError a checkpoint that cannot be used: damaged, non-finite, or of another
│                   run (another mix, model shape or masking) — names the checkpoint and why
└── TrainingError   the run cannot go on (a non-finite loss or gradient) — names the step
"""

from tinyllama._core import (
    InputError,
    ShardError,
    SpecError,
    StorageError,
    TinyllamaError,
    TokenizerError,
    UsageError,
)


class LockedError(StorageError):
    """A second process wanted an output dir that another process holds (`tinyllama.lock`)."""


class CheckpointError(TinyllamaError):
    """A training checkpoint that cannot be used (damaged, non-finite, or of another run)."""


class TrainingError(TinyllamaError):
    """Training stopped: a step's loss or gradient norm was not finite (names the step)."""


__all__ = ["CheckpointError", "TrainingError", "InputError", "LockedError", "ShardError", "SpecError", "StorageError",
           "TinyllamaError", "TokenizerError", "UsageError"]
