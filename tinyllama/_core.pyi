"""`tinyllama._core`: the Python bindings of the Rust core (type stubs for rust/lib.rs and rust/py/)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "TinyllamaError",
    "InputError",
    "SpecError",
    "TokenizerError",
    "ShardError",
    "StorageError",
    "UsageError",
    "Tokenizer",
    "read_tokenizer_json",
    "MixSampler",
    "Loader",
    "Slot",
    "ShardCache",
    "Bucket",
    "BuildPlan",
    "build_mix",
    "dedup_files",
    "judge_documents",
    "filter_settings",
    "load_word_rules",
    "detect_language",
    "verify_shard",
    "verify_mix",
    "__version__",
]

__version__: str

# Exceptions. Every Rust `Error` surfaces as one of these (an interrupted build as
# KeyboardInterrupt). Note: at run time their `__module__` is "_core".

class TinyllamaError(Exception):
    """Base class of every tinyllama error."""

class InputError(TinyllamaError):
    """A bad record in an input corpus file (names the file and line/row)."""

class SpecError(TinyllamaError):
    """An invalid spec or config (names the key)."""

class TokenizerError(TinyllamaError):
    """A missing or unusable tokenizer."""

class ShardError(TinyllamaError):
    """A corrupt shard or manifest (names the shard)."""

class StorageError(TinyllamaError):
    """An OS-level read/write failure (names the path)."""

class UsageError(TinyllamaError):
    """An API called the wrong way: a build stage before `prepare`, a corpus or file index out of range, a step
    past the schedule, a rank outside the world."""

@final
class Tokenizer:
    """A Hugging Face `tokenizer.json`, encoded by the Rust core."""

    def __new__(cls, path: str | os.PathLike[str]) -> Tokenizer: ...
    @property
    def sha256(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    def special_ids(self) -> tuple[int | None, int | None, int | None]:
        """(bos, eos, unk) ids, each None when the tokenizer has none: the ids a build writes around documents,
        an export declares and generation starts with."""
    def token_to_id(self, token: str) -> int | None: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> npt.NDArray[np.uint32]: ...
    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[npt.NDArray[np.uint32]]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

def read_tokenizer_json(path: str | os.PathLike[str]) -> bytes:
    """The tokenizer.json bytes of a tokenizer file, decompressed when it is zstd (by its magic number, whatever
    its name)."""

def build_mix(
    config_json: str,
    progress: Callable[[str, int, int, int, int, int, int, float], object] | None = None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Run `mix build` from a resolved JSON config.

    Returns {up_to_date, rebuilt, files_resumed, files_processed, docs_kept, tokens}; `rebuilt` says
    why a complete mix of this identity was rebuilt (None when it was not). `progress` is called
    as progress(stage, files_done, files_total, docs, tokens, bytes, bytes_total, seconds): the current
    stage's own counts (input bytes as they are read; bytes_total less the files resumed; seconds since
    the stage started).
    """

@final
class BuildPlan:
    """One build's plan, for running its stages separately (the Ray build: one task a file)."""

    def __new__(cls, config_json: str) -> BuildPlan: ...
    @property
    def identity(self) -> str: ...
    def corpora(self) -> list[tuple[str, int, bool]]:
        """(name, number of input files, whether it is deduplicated) of each corpus, in order."""
    def files(self, corpus: int) -> list[tuple[str, int]]:
        """(name, size) of each input file of corpus `corpus`, in the build's order: its path under the
        pattern's directory (the same from a directory and from a bucket)."""
    def prepare(self) -> bool:
        """Ready the output dir (run once, by the driver).

        Returns True when the mix is already complete.
        """
    def prepare_report(self) -> tuple[bool, str | None]:
        """`prepare`, also saying why: (up to date, why a complete mix of this identity is rebuilt — a file its
        lock names was missing or did not verify — or None)."""
    def fingerprint(self, corpus: int, file: int) -> dict[str, Any]:
        """Returns {resumed, bytes, docs, docs_kept, tokens}."""
    def band_ranges(self, corpus: int, partitions: int) -> list[tuple[int, int]]:
        """The band ranges `(start, end)` of `partitions` band partitions of corpus `corpus` (empty when it has
        no near-duplicate stage)."""
    def dedup_exact(self, corpus: int) -> dict[str, Any]:
        """The exact-groups stage of corpus `corpus` (after all its fingerprints).

        Returns {resumed, docs, pairs}.
        """
    def dedup_bands(self, corpus: int, start: int, end: int) -> dict[str, Any]:
        """The band stage of corpus `corpus` for bands `start..end` (after its exact stage).

        Returns {resumed, docs, pairs}.
        """
    def dedup(self, corpus: int, partitions: int | None = None) -> dict[str, Any]:
        """Commit corpus `corpus`'s dedup decision: searched here when `partitions` is None, otherwise resolved
        from the committed exact and band-partition stages.

        Returns {resumed, exact_duplicates, near_duplicates}.
        """
    def tokenize(self, corpus: int, file: int) -> dict[str, Any]:
        """Returns {resumed, bytes, docs, docs_kept, tokens}."""
    def pack_layout(self, corpus: int) -> list[str]:
        """The shard layout of corpus `corpus` (after all its parts), one JSON object per shard:
        `{"name", "slices": [[part, start, end]...], "docs", "tokens"}`."""
    def pack_shard(self, corpus: int, shard_json: str) -> dict[str, Any]:
        """Write one shard of the layout (a JSON object from `pack_layout`) into staging.

        Returns {resumed, docs, tokens}.
        """
    def finish(self) -> dict[str, Any]:
        """Pack, write the schedule, the tokenizer and the lock; drop the staging.

        Returns {docs_kept, tokens}.
        """

def dedup_files(
    paths: list[str | os.PathLike[str]],
    text: str,
    params_json: str,
    work_dir: str | os.PathLike[str],
    workers: int,
    max_doc_bytes: int = 67108864,  # 64 << 20
) -> dict[str, Any]:
    """Dedup `paths` (in this order: the earliest duplicate is kept) outside a build, with the spec's `[dedup]`
    table as JSON (defaults: SlimPajama's parameters) on `workers` threads.

    Returns {docs, exact, near, removed: list[(file index, row)], spilled_runs, fingerprint_seconds,
    find_seconds}.
    """

def judge_documents(
    filters: list[tuple[str, str]], texts: list[str], workers: int = 0
) -> list[tuple[str, str] | None]:
    """Judge `texts` with the filter chain `filters` ([(name, settings as JSON)], applied in that order: the
    first that drops a text names it) on `workers` threads (0 = all cores). One entry per text: None (kept) or
    (filter, reason). Raises SpecError naming `filters.<name>.<key>` for a bad setting."""

def load_word_rules(dir: str | os.PathLike[str]) -> str:
    """Load the English word rules the heuristic filters split with, from `dir` as
    `tinyllama.data.word_rules` writes them (from the installed spaCy and datatrove); once per process (the
    same rules again are a no-op, other rules raise UsageError). Returns their digest."""

def filter_settings(filters: list[tuple[str, str]]) -> list[str]:
    """The resolved settings (JSON, defaults filled in) of each filter of `filters`, as the lock records them."""

def detect_language(texts: list[str]) -> list[tuple[str, float]]:
    """The language of each text as (ISO 639-1 code, confidence in [0, 1]), as the `language` filter sees it
    (whatlang's detector, compiled in; ("und", 0.0) for a text without letters). Runs in parallel without the
    GIL; Ctrl-C interrupts it."""

def verify_shard(
    path: str | os.PathLike[str], vocab_size: int | None = None, checksum: str | None = None
) -> None:
    """Check a shard's structure and checksum (against `checksum`, its manifest's hex, when given) and, given
    `vocab_size`, that every token id is below it; raises `ShardError` naming the shard (and the document, for
    an id) when it is not so."""

def verify_mix(mix_dir: str | os.PathLike[str], deep: bool = False, workers: int | None = None) -> None:
    """Check a built mix where it is opened: its lock's format and seal and the sha256 of every file it pins
    (schedule, tokenizer, manifests, dedup reports). With `deep`, also every shard the manifests name (footer
    against the manifest, checksum over every byte, token ids against the vocabulary), on `workers` threads.
    Raises naming the first bad file."""

@final
class ShardCache:
    """The shard cache of a mix in a bucket (rust/mix/shard_cache.rs): `mix_dir` holds its pinned files, shards
    are fetched into it on first use, verified before they are published, and the least recently used shards of
    `mix_dir`'s parent are evicted past `cache_bytes`."""

    def __new__(cls, mix_dir: str | os.PathLike[str], url: str, cache_bytes: int | None = None) -> ShardCache: ...
    def fetch(self, corpus: str, name: str) -> str:
        """The local path of shard `name` of `corpus` (training or holdout), fetched and verified first if the
        cache does not hold it."""
    @property
    def downloads(self) -> int:
        """Shards this cache object downloaded (a shard another rank fetched is not counted)."""

@final
class MixSampler:
    """The sampler of a built mix: step -> that rank's slice of the global batch."""

    def __new__(
        cls, mix_dir: str | os.PathLike[str], branch: str | None = None, cache: ShardCache | None = None
    ) -> MixSampler: ...
    def num_steps(self) -> int: ...
    def seq_len(self) -> int: ...
    def batch_sequences(self, step: int) -> int: ...
    def tokens_before(self, step: int) -> int: ...
    def stage_of(self, step: int) -> int: ...
    def weights_at(self, step: int) -> list[float]: ...
    def counts_at(self, step: int) -> list[int]: ...
    def cursors_at(self, step: int) -> list[int]: ...
    def epochs(self) -> list[int]: ...
    def stage_steps(self) -> list[tuple[int, int]]: ...
    def samples(self, step: int, rank: int = 0, world: int = 1) -> list[tuple[int, int, int]]:
        """(corpus index, epoch, window) of each sequence of rank's slice at `step`."""
    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[npt.NDArray[np.uint32], list[int]]:
        """Rank's slice at `step`: (tokens uint32 [n, seq_len + 1], corpus index of each row)."""

@final
class Loader:
    """The ring-buffer loader: Rust threads gather rank's batches ahead of the trainer."""

    def __new__(
        cls,
        mix_dir: str | os.PathLike[str],
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
        end_step: int | None = None,
        slots: int = 4,
        threads: int = 1,
        branch: str | None = None,
        cache: ShardCache | None = None,
    ) -> Loader: ...
    def next(self) -> Slot | None:
        """The next step's slot (blocks until filled), or None past the last step."""
    def seek(self, step: int) -> None: ...
    @property
    def position(self) -> int: ...
    def buffer_regions(self) -> list[tuple[int, int]]:
        """(address, bytes) of each ring buffer, for page-locking them with cudaHostRegister."""

@final
class Slot:
    """One filled ring slot."""

    # No constructor: slots come only from `Loader.next()`.
    @property
    def step(self) -> int: ...
    @property
    def corpora(self) -> list[int]:
        """Corpus index of each row."""
    @property
    def tokens(self) -> npt.NDArray[np.uint32]:
        """The tokens as a read-only numpy uint32 array [rows, seq_len + 1] viewing the ring buffer itself (no
        copy)."""

@final
class Bucket:
    """A bucket (`s3://bucket/prefix`), opened from the standard AWS environment (rust/storage). Keys are
    relative to the bucket; failures raise `StorageError` naming the URL."""

    def __new__(cls, url: str) -> Bucket: ...
    @property
    def prefix(self) -> str:
        """The key the URL named (no leading or trailing `/`)."""
    def url(self, key: str) -> str: ...
    def list(self, prefix: str) -> list[tuple[str, int, str | None]]:
        """(key, size, etag) of every object under the key prefix, sorted by key."""
    def head(self, key: str) -> tuple[str, int, str | None] | None: ...
    def get(self, key: str, etag: str | None = None) -> bytes: ...
    def put(self, key: str, data: bytes) -> tuple[str, int, str | None]: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Replace `key` only if it is still the object with `etag`: True if this call wrote."""
    def delete(self, key: str) -> None: ...
    def upload(self, path: str | os.PathLike[str], key: str) -> tuple[str, int, str | None]: ...
    def download(self, key: str, path: str | os.PathLike[str], size: int | None = None,
                 etag: str | None = None) -> int:
        """Download `key` to `path` (through `path.part`); given the listed (size, etag), check it whole."""
