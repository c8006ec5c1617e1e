"""The torch face of the Rust ring-buffer loader.

Rust threads gather each step's windows from the mmapped shards into a ring of preallocated
buffers ahead of the trainer. Each batch reaches Python as a tensor that *views* its ring
buffer (no copy); the buffer goes back to the ring only when every tensor/array viewing it
has been freed. With CUDA, the ring is page-locked once (cudaHostRegister) so host->device
copies are asynchronous (`non_blocking=True`).

For a mix in a bucket the same worker threads fetch (and verify) each shard the first time a
step needs it, so a fetch happens up to `slots` steps ahead of the trainer, not on its thread.

Resume is O(1): the loader starts at any step directly (the sampler locates a step in closed
form); `state_dict()` is just the next step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tinyllama import _core


@dataclass
class LoaderBatch:
    step: int
    tokens: torch.Tensor  # noqa: F821 - int32 [rows, seq_len + 1], a view of the ring buffer
    corpora: list[str]


class Loader:
    def __init__(self, mix, rank: int = 0, world: int = 1, start_step: int = 0, end_step: int | None = None,
                 slots: int = 4, threads: int = 1, pin: bool | None = None):
        self.mix, self.rank, self.world = mix, rank, world
        self._names = mix.corpora
        self._core = _core.Loader(str(mix.path), rank, world, start_step, end_step, slots, threads,
                                  getattr(mix, "branch", None), getattr(mix, "_cache", None))
        # pin=None: page-lock when CUDA is there; pin=False: never.
        self._pinned = _pin(self._core.buffer_regions()) if pin is not False else False

    @property
    def pinned(self) -> bool:
        return self._pinned

    def __iter__(self) -> Iterator[LoaderBatch]:
        return self

    def __next__(self) -> LoaderBatch:
        slot = self._core.next()
        if slot is None:
            raise StopIteration
        import torch

        # ids < 2**31, so the uint32 buffer reads as int32 exactly; numpy view -> torch view.
        # The array is read-only on purpose (the ring owns it); torch warns about that once.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tokens = torch.from_numpy(slot.tokens.view(np.int32))
        return LoaderBatch(slot.step, tokens, [self._names[c] for c in slot.corpora])

    def state_dict(self) -> dict:
        return {"step": self._core.position}

    def load_state_dict(self, state: dict) -> None:
        self._core.seek(int(state["step"]))


def _pin(regions: list[tuple[int, int]]) -> bool:
    """Page-lock the ring buffers when CUDA is available; a no-op (False) otherwise."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    cudart = torch.cuda.cudart()
    for address, nbytes in regions:
        if int(cudart.cudaHostRegister(address, nbytes, 0)) != 0:
            return False
    return True
