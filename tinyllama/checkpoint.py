"""Training checkpoints: torch distributed checkpoint (DCP), committed atomically.

    out/checkpoints/
      step-1000/            a committed checkpoint
        .metadata, __*.distcp   model + optimizer state (DCP: resharded on load, so a run may
                                resume on a different world size)
        trainer.json        step, tokens, lr-schedule position, world size, the train config
        rng/rank-R.pt       each rank's RNG states
      step-2000.tmp/        a save in progress (ignored and removed on the next start)
      latest                "step-2000": the newest committed checkpoint

A save writes everything into `step-N.tmp/`; after a barrier (all ranks done), rank 0 renames
it to `step-N/` and then replaces `latest` via a temp file + rename. A kill at any instant
leaves the previous `latest` pointing at a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from tinyllama.model import Llama, ModelConfig

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def committed_steps(ckpt_dir: Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(
        int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The newest committed checkpoint (per `latest`, else the highest step-N dir)."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / "latest"
    if marker.is_file():
        p = ckpt_dir / marker.read_text(encoding="utf-8").strip()
        if (p / "trainer.json").is_file():
            return p
    steps = [s for s in committed_steps(ckpt_dir) if (ckpt_dir / f"step-{s}" / "trainer.json").is_file()]
    return ckpt_dir / f"step-{steps[-1]}" if steps else None


def clean_partial(ckpt_dir: Path) -> None:
    """Remove saves that were interrupted (rank 0, at start-up)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet():
    """DCP warns when used without a process group; that is intended here (one process)."""
    with warnings.catch_warnings():
        if not (dist.is_available() and dist.is_initialized()):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save(
    ckpt_dir: str | os.PathLike[str],
    step: int,
    model,
    optimizer,
    trainer_state: dict,
    *,
    rank: int,
    world: int,
    keep_last: int,
    barrier,
) -> Path:
    """Collective: every rank calls it. Returns the committed directory."""
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f"step-{step}.tmp"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "rng").mkdir()
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(_rng_state(), tmp / "rng" / f"rank-{rank}.pt")
    if rank == 0:
        _write_atomic(
            tmp / "trainer.json", json.dumps({**trainer_state, "step": step, "world": world}, indent=1)
        )
    barrier()  # every rank's shards are on disk
    if rank == 0:
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(ckpt_dir)
        _write_atomic(ckpt_dir / "latest", final.name + "\n")
        for old in committed_steps(ckpt_dir)[:-keep_last]:
            shutil.rmtree(ckpt_dir / f"step-{old}", ignore_errors=True)
    barrier()
    return final


def load(path: str | os.PathLike[str], model, optimizer, *, rank: int) -> dict:
    """Collective: restore model + optimizer (resharded to this world) and this rank's RNG.
    Returns the trainer state (step, tokens, ...)."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    rng = path / "rng" / f"rank-{rank}.pt"
    if rng.is_file() and trainer.get("world") is not None:
        _set_rng_state(torch.load(rng, weights_only=False))
    return trainer


def _resolve(path: Path) -> Path:
    """Accept a run dir, its checkpoints dir, or one step-N dir."""
    if (path / "trainer.json").is_file():
        return path
    for cand in (path, path / "checkpoints"):
        found = latest_checkpoint(cand)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no committed training checkpoint (step-N/ with trainer.json) found")


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Llama:
    """The model in `path`, as a plain (unsharded) fp32 `Llama` in eval mode.

    `path` is a training run dir, its `checkpoints/` dir or one `step-N/` dir (single process, no
    process group needed: DCP reads the shards of any world size). Hugging Face dirs are read by
    `tinyllama.hf.load_model`, which also takes these.
    """
    ckpt = _resolve(Path(path))
    trainer = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
    model = empty_model(ModelConfig(**trainer["config"]["model"]), device)
    sd = {"model": model.state_dict()}
    with _quiet():
        dcp.load(sd, checkpoint_id=str(ckpt))
    model.load_state_dict(sd["model"])
    return model.eval()


def empty_model(cfg: ModelConfig, device) -> Llama:
    """A model with allocated but uninitialised weights (the caller loads them) and its RoPE cache."""
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device=device)
    model.init_rope()
    return model


__all__ = ["clean_partial", "committed_steps", "empty_model", "latest_checkpoint", "load", "load_model", "save"]
