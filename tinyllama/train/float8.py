"""float8 training (`run.float8 = true`) with torchao, on GPUs with float8 tensor cores.

The Linear layers of the transformer blocks (attention's qkv / o projections, the MLP's
gate_up / down) become torchao `Float8Linear`s with tensorwise dynamic scaling: each matmul
casts its input, weight and output gradient to float8 with one scale per tensor, computed
from the tensor itself; the embedding and `lm_head` stay in bf16 (the recipe torchtitan and
OLMo-core use). Under FSDP2 the weights are all-gathered in float8 (half the bf16 traffic),
their scales computed once per optimizer step for all of them (`precompute_float8_dynamic_scale_for_fsdp`).
`run.compile` fuses the casts into the blocks' graphs (the conversion comes before it).

The parameters stay high-precision (fp32 master weights): checkpoints hold the same names,
shapes and dtypes as a run without float8, so resume, export, eval and `load_model` are
unchanged, and a run may switch float8 on or off at a resume.

Refused in one line where it cannot run: without torchao (the `float8` extra), or on a device
without float8 tensor cores (CUDA compute capability 8.9+: H100 / H200, L40S, L4, RTX 4090).
`TINYLLAMA_FLOAT8_EMULATE=1` (tests) runs torchao's emulation instead, on any device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import torch
from torch import nn

from tinyllama.errors import SpecError

EMULATE_ENV = "TINYLLAMA_FLOAT8_EMULATE"
MIN_CAPABILITY = (8, 9)


def emulated() -> bool:
    return os.environ.get(EMULATE_ENV, "").strip() == "1"


@contextlib.contextmanager
def _quiet_import():
    """torchao logs a deprecation warning of torch's pytree on import: not the user's business."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def torchao_float8(source: str = "<config>"):
    """torchao.float8, or a one-line SpecError naming the extra."""
    try:
        with _quiet_import():
            import torchao.float8 as f8
    except ImportError:
        raise SpecError(f"{source}: key 'run.float8': needs torchao (pip install 'tinyllama-forge[float8]')") from None
    return f8


def why_not(device: torch.device) -> str | None:
    """Why `device` cannot train in float8 (None when it can)."""
    if emulated():
        return None
    if device.type != "cuda":
        return (f"float8 training needs an NVIDIA GPU with float8 tensor cores (compute capability 8.9+: H100, "
                f"H200, L40S, L4, RTX 4090); this run is on {device.type}")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"float8 training needs float8 tensor cores (compute capability 8.9+); "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
    return None


def block_linear(module: nn.Module, fqn: str) -> bool:
    """The Linear layers float8 converts: inside the blocks (`layers.N...`), with both dims a
    multiple of 16 (float8 matmuls need it); never the embedding or `lm_head`."""
    return (isinstance(module, nn.Linear) and fqn.startswith("layers.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def convert(model: nn.Module, *, fsdp: bool, emulate: bool = False) -> int:
    """Swap the blocks' Linear layers for torchao's Float8Linear (tensorwise dynamic scaling;
    float8 all-gather under FSDP2). Returns how many were converted."""
    f8 = torchao_float8()
    config = f8.Float8LinearConfig.from_recipe_name("tensorwise")
    config = dataclasses.replace(config, enable_fsdp_float8_all_gather=fsdp, emulate=emulate)
    before = sum(isinstance(m, nn.Linear) for m in model.modules())
    f8.convert_to_float8_training(model, config=config, module_filter_fn=block_linear)
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules()) if before else 0


def apply(model: nn.Module, cfg, d) -> None:
    """`run.float8` on the model being built (before compile and FSDP): checked, converted."""
    why = why_not(d.device)
    if why:
        raise SpecError(f"{cfg.source}: key 'run.float8': {why}; set run.float8 = false")
    torchao_float8(cfg.source)
    convert(model, fsdp=d.mesh is not None, emulate=emulated())


def after_each_step(model: nn.Module, opt: torch.optim.Optimizer, d) -> None:
    """Under FSDP2 with float8 all-gather: the weights' float8 scales, computed once per
    optimizer step for every weight (one all-reduce), not in each all-gather."""
    if d.mesh is None:
        return
    f8 = torchao_float8()
    opt.register_step_post_hook(lambda *_: f8.precompute_float8_dynamic_scale_for_fsdp(model))
