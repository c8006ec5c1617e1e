"""Process group, device mesh and FSDP2 sharding.

Launch: plain `python` (one process, no FSDP), `torchrun --nproc-per-node N` (FSDP2 over N
ranks), or multi-node `torchrun --nnodes M --rdzv-backend c10d ...`: when the world spans more
than one node the mesh is 2D ("replicate", "shard") and FSDP2 does hybrid sharding (HSDP):
parameters are sharded within a node (fast NVLink reduce-scatter) and replicated across nodes
(one all-reduce of the already reduced shards), as TinyLlama v1.1 did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device
    mesh: object | None  # DeviceMesh when FSDP is used (world > 1)
    owns_group: bool = False  # we initialised the process group (so we tear it down)
    step: int = 0  # the last optimizer step this rank finished (for the line a lost rank leaves)
    train_timeout: float | None = None  # the collective timeout set after the first step (seconds)
    # Whether every rank sees the same out dir (one filesystem), found when the run takes its out
    # dir (train/out_dir.py, lock_out_dir). False: each node has an out dir of its own, holding that
    # node's part of each checkpoint; the whole checkpoints are committed in run.upload_to.
    out_shared: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        """How many nodes (torchrun agents) the world spans."""
        return node_count(self.world, self.local_world)

    @property
    def leads_out(self) -> bool:
        """This rank keeps the out dir it sees (creates, renames and prunes checkpoint dirs): rank 0
        when the nodes share out, each node's local rank 0 when they do not."""
        return self.is_main if self.out_shared else self.local_rank == 0

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()


def init_distributed() -> Dist:
    """Set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    mesh, owns = None, False
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        owns = True
    if world > 1:
        mesh = build_mesh(device.type, world, local_world)
    return Dist(rank, world, local_rank, local_world, device, mesh, owns)


def node_count(world: int, local_world: int) -> int:
    """How many nodes of `local_world` ranks each make up `world` (1 when they do not divide it)."""
    return world // local_world if local_world and world % local_world == 0 else 1


def build_mesh(device_type: str, world: int, local_world: int):
    from torch.distributed.device_mesh import init_device_mesh

    nodes = node_count(world, local_world)
    if nodes > 1 and local_world > 1:
        return init_device_mesh(device_type, (nodes, local_world), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))


def shard_model(model: nn.Module, mesh, bf16: bool) -> nn.Module:
    """FSDP2: one `fully_shard` unit per transformer block, then the root (embeddings, final
    norm, lm_head). On a 2D mesh this is HSDP. bf16 params for compute, fp32 gradient reduce."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mesh": mesh}
    if mp is not None:
        kw["mp_policy"] = mp
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's params are needed again right away by backward: keep them gathered.
        fully_shard(block, reshard_after_forward=i < n - 1, **kw)
    fully_shard(model, **kw)
    return model


def parallelize(model: nn.Module, d: Dist, *, compile: bool, activation_checkpointing: bool, bf16: bool) -> bool:
    """Everything that changes how the model runs, applied in one place (torchtitan's order):
    activation checkpointing, then `torch.compile` per block (small graphs; FSDP hooks stay
    outside them), then FSDP2 per block when there is more than one rank. Returns whether FSDP
    handles bf16 itself (mixed-precision policy on CUDA); otherwise the caller autocasts."""
    model.activation_checkpointing = activation_checkpointing
    if compile:
        for block in model.layers:
            block.compile()
    fsdp_bf16 = bf16 and d.mesh is not None and d.device.type == "cuda"
    if d.mesh is not None:
        shard_model(model, d.mesh, bf16=fsdp_bf16)
    return fsdp_bf16


def set_train_timeout(d: Dist, seconds: float) -> None:
    """After the first step (torchtitan's `train_timeout_seconds`): collectives that wait longer
    than `seconds` for another rank fail instead of waiting out the 30 minutes start-up may
    need (NCCL's default is 10 minutes; a lost node would hold every other rank that long).
    Collective, once per run; a no-op on one process or with `seconds` = 0."""
    if d.world <= 1 or not seconds or d.train_timeout is not None or not d.initialized:
        return
    # Every rank gets here before any collective runs with the shorter timeout.
    if d.device.type == "cuda":
        dist.barrier(device_ids=[d.device.index])
        torch.cuda.synchronize(d.device)
    else:
        dist.barrier()
    from torch.distributed.distributed_c10d import _set_pg_timeout

    groups = [None]  # the default group, and the mesh's own
    if d.mesh is not None:
        groups += [d.mesh.get_group(i) for i in range(d.mesh.ndim)]
    for group in groups:
        _set_pg_timeout(timedelta(seconds=seconds), group)
    d.train_timeout = seconds


_LOST = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out", "timeout",
         "socket", "peer")


def collective_failure(e: BaseException, d: Dist) -> str | None:
    """What failed, in one phrase, when `e` is a collective that lost another rank (its socket
    closed, or no answer within the timeout); None for any other error (a bug keeps its
    traceback)."""
    if d.world <= 1:
        return None
    text = str(e).strip()
    dist_error = getattr(dist, "DistError", None)
    if not ((dist_error is not None and isinstance(e, dist_error)) or any(m in text.lower() for m in _LOST)):
        return None
    import re

    lines = [re.sub(r"^\[[^\]]*\]\s*", "", ln).strip() for ln in text.splitlines() if ln.strip()]
    what = next((ln for ln in lines if any(m in ln.lower() for m in _LOST)), lines[0] if lines else type(e).__name__)
    return what.split(". ")[0][:200]  # gloo's first sentence ("Connection closed by peer [host]:port")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def decided_by_main(fn):
    """Collective: `fn()` on rank 0 alone; its result, or the `TinyllamaError` it raised (as the
    same type), on every rank. For what rank 0's view of the run decides (a file only it may see)."""
    from tinyllama import errors

    got = None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        try:
            got = ("ok", fn())
        except errors.TinyllamaError as e:
            got = ("error", type(e).__name__, str(e))
    got = all_gather_objects(got)[0]
    if got[0] == "error":
        raise getattr(errors, got[1], errors.TinyllamaError)(got[2])
    return got[1]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
