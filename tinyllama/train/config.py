"""The training config: typed dataclasses loaded from TOML, with `--set key=value` overrides.

    mix = "mixes/chinese"         # a built mix dir (relative to the config file)
    out = "runs/chinese"
    branch = "chinese"            # a family mix: the branch to train (unset: the trunk)
    branch_from = "runs/trunk"    # a family: start the branch from this trunk run / checkpoint
    model = "tinyllama-1.1b"      # a named config, or a [model] table (optionally with
                                  # `name = "..."` as the base whose fields it overrides)
    micro_batch = 8
    [optim] lr, min_lr, warmup_steps, weight_decay, betas, grad_clip,
            schedule (cosine | wsd), decay_fraction, decay_shape (linear | 1-sqrt)
    [run]   max_steps, stop_after, log_every, save_every, keep_last, precision, compile,
            activation_checkpointing, seed, peak_tflops, document_masking, eval_every, trackers,
            async_checkpoint, float8, train_timeout_s
    [run.guard] enabled, spike_factor, window, max_rewinds
    [run.wandb] project, entity, name, group, mode (online | offline | disabled)

Paths in the file are relative to the file; paths given with `--set` are relative to the
current directory. Every error is a `SpecError` naming the file and the key, in the shape the
mix spec's errors have (`tinyllama.toml_schema`: unknown keys get a "did you mean").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tinyllama.errors import SpecError
from tinyllama.model import NAMED_CONFIGS, ModelConfig
from tinyllama.toml_schema import build_dataclass, check_keys, coerce, key_error, parse_literal, read_toml


@dataclass
class OptimConfig:
    lr: float = 4e-4
    min_lr: float = 4e-5
    warmup_steps: int = 2000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    # cosine: TinyLlama's (to min_lr at the last step). wsd: warmup, stable at lr, then a decay
    # over the last `decay_fraction` of the steps (MiniCPM / OLMo-core), linear or 1-sqrt.
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = 0.2
    decay_shape: Literal["linear", "1-sqrt"] = "1-sqrt"


@dataclass
class GuardConfig:
    """`[run.guard]`: a step whose loss is NaN / inf, or above `spike_factor` x the median of
    the last `window` applied steps' losses (checked once `window` steps are in), is not
    applied: the run rewinds to its last checkpoint and skips that step's batch. After
    `max_rewinds` rewinds with no step applied in between, the next failure stops the run.
    `enabled = false`: a non-finite step stops the run at once; spikes are not checked."""

    enabled: bool = True
    spike_factor: float = 3.0
    window: int = 100
    max_rewinds: int = 3


@dataclass
class WandbConfig:
    """`[run.wandb]` (with "wandb" in `run.trackers`; train/trackers.py). Unset keys fall back
    to W&B's own `WANDB_*` environment (the project then to "tinyllama"; the name to the out
    dir's; the group, for a family's trunk and branches, to one they share)."""

    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None


@dataclass
class RunConfig:
    max_steps: int = 0  # 0 = the mix's whole schedule; also the length of the cosine schedule
    stop_after: int = 0  # end this invocation after this step (schedule unchanged); 0 = never
    log_every: int = 10
    save_every: int = 1000  # 0 = only at the end
    keep_last: int = 3
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = True
    activation_checkpointing: bool = False
    seed: int = 3407  # model init (data order is fixed by the mix's own seed)
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = the known GPUs' bf16 table (none on CPU)
    # true: each packed document attends only to itself, RoPE positions restart per document,
    # and no position is scored on the next document's first token. false: TinyLlama's packing
    # (one causal sequence per window, every position scored). A resume keeps the checkpoint's.
    document_masking: bool = True
    eval_every: int = 0  # validation loss on the mix's held-out documents every N steps (and at the end); 0 = off
    guard: GuardConfig = field(default_factory=GuardConfig)
    # where the records of metrics.jsonl also go: "tensorboard" (out/tb) and / or "wandb" ([run.wandb])
    trackers: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # true: a save copies the state to host memory and is written and committed on a thread while
    # training goes on (train/async_checkpoint.py); false: the loop waits for the whole save
    async_checkpoint: bool = False
    # true: the blocks' Linear layers compute in float8 (torchao, tensorwise scaling; GPUs with float8
    # tensor cores: train/float8.py); the weights and checkpoints stay high-precision
    float8: bool = False
    # "s3://bucket/runs/NAME": every committed checkpoint is also uploaded there, in the background
    # (files, checksums, then a commit marker; keep_last applies there too); `--resume` with no
    # local checkpoint takes the newest one there that verifies (train/remote.py). "" = off
    upload_to: str = ""
    # seconds a collective may wait for another rank once the first step is done (a lost node ends
    # every other rank's run after this, with one line each); 0 = keep the start-up timeout (30 min)
    train_timeout_s: float = 600.0


@dataclass
class TrainConfig:
    mix: str
    out: str
    model: ModelConfig
    micro_batch: int = 8
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # a family mix (train/family.py): the branch this run trains (None: the trunk, which ends at
    # the branch point), and the trunk run dir / checkpoint it starts from (None: from step 0)
    branch: str | None = None
    branch_from: str | None = None
    # a mix in a bucket (mix = "s3://..."): the local cache it is fetched into (default
    # $TINYLLAMA_CACHE/mixes) and its byte budget (binary suffixes; 0 = unbounded)
    mix_cache: str | None = None
    mix_cache_bytes: int = 0
    source: str = "<config>"  # where it came from, for error messages

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d


_SECTIONS = {"optim": OptimConfig, "run": RunConfig}
_TOP = {"mix", "out", "model", "micro_batch", "optim", "run", "branch", "branch_from", "mix_cache", "mix_cache_bytes"}
_PATHS = ("mix", "out", "branch_from", "mix_cache")  # relative to the config file (to the cwd with --set)


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    path = Path(path)
    raw = read_toml(path, "train config")
    base = path.resolve().parent
    for key in _PATHS:
        if isinstance(raw.get(key), str) and "://" not in raw[key]:  # a bucket URL is not a path
            raw[key] = os.path.normpath(base / raw[key])
    return config_from_dict(raw, overrides, source=str(path))


def config_from_dict(raw: dict, overrides: Sequence[str] = (), source: str = "<config>") -> TrainConfig:
    raw = _deep_copy(raw)
    for ov in overrides:
        _apply_override(raw, ov, source)
    try:
        return _build(raw, source)
    except SpecError as e:
        raise _blame_override(e, overrides, source) from None


def _blame_override(e: SpecError, overrides: Sequence[str], source: str) -> SpecError:
    """An error about a key that a `--set` gave (or a key inside a table it gave) names that
    `--set` argument instead of the config file: `--set 'run.max_step=5': key 'run.max_step': ...`."""
    msg = str(e)
    head = f"{source}: key '"
    if not msg.startswith(head):
        return e
    key = msg[len(head):].split("'", 1)[0]
    for ov in reversed(overrides):  # the last --set of a key is the one that counts
        set_key = ov.partition("=")[0].strip()
        if key == set_key or key.startswith(set_key + "."):
            return SpecError(f"--set {ov!r}: {msg[len(source) + 2:]}")
    return e


def _deep_copy(d: Any) -> Any:
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def _apply_override(raw: dict, ov: str, source: str) -> None:
    key, sep, text = ov.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {ov!r}: expected KEY=VALUE, e.g. run.max_steps=50")
    value = parse_literal(text.strip())
    parts = key.split(".")
    if parts[0] in _PATHS and len(parts) == 1 and isinstance(value, str) and "://" not in value:
        value = os.path.abspath(value)  # command-line paths are relative to the cwd
    if parts[0] == "model" and len(parts) > 1 and isinstance(raw.get("model"), str):
        raw["model"] = {"name": raw["model"]}  # a field override on a named model
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SpecError(f"--set {ov!r}: key '{'.'.join(parts[: i + 1])}' is not a table")
        node = nxt
    node[parts[-1]] = value


def _build(raw: dict, source: str) -> TrainConfig:
    try:
        check_keys(raw, _TOP)
        for k in ("mix", "out"):
            if k not in raw:
                raise key_error(k, "required key is missing")
            coerce(raw[k], str, k)
        model = _build_model(raw.get("model", "tinyllama-1.1b"))
        micro_batch = coerce(raw.get("micro_batch", 8), int, "micro_batch")
        branch = {k: coerce(raw[k], str, k) if raw.get(k) is not None else None
                  for k in ("branch", "branch_from", "mix_cache")}
        from tinyllama.data.spec import parse_bytes

        branch["mix_cache_bytes"] = parse_bytes(raw.get("mix_cache_bytes", 0), "mix_cache_bytes")
        if micro_batch <= 0:
            raise key_error("micro_batch", f"must be > 0, got {micro_batch}")
        run_raw = raw.get("run", {})
        guard_raw = run_raw.pop("guard", {}) if isinstance(run_raw, dict) else {}
        wandb_raw = run_raw.pop("wandb", {}) if isinstance(run_raw, dict) else {}
        sections = {name: build_dataclass(cls, raw.get(name, {}), f"{name}.") for name, cls in _SECTIONS.items()}
        sections["run"].guard = build_dataclass(GuardConfig, guard_raw, "run.guard.")
        sections["run"].wandb = build_dataclass(WandbConfig, wandb_raw, "run.wandb.")
        cfg = TrainConfig(
            mix=raw["mix"], out=raw["out"], model=model, micro_batch=micro_batch, source=source, **branch, **sections
        )
        _validate(cfg)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    return cfg


def _build_model(value: Any) -> ModelConfig:
    if isinstance(value, str):
        if value not in NAMED_CONFIGS:
            raise key_error("model", f"unknown model {value!r} (known: {', '.join(sorted(NAMED_CONFIGS))})")
        return ModelConfig.from_name(value)
    if not isinstance(value, dict):
        raise key_error("model", "must be a model name or a table")
    table = dict(value)
    name = table.pop("name", None)
    if name is not None:
        if name not in NAMED_CONFIGS:
            raise key_error("model.name", f"unknown model {name!r} (known: {', '.join(sorted(NAMED_CONFIGS))})")
        table = {**dataclasses.asdict(NAMED_CONFIGS[name]), **table}
    cfg = build_dataclass(ModelConfig, table, "model.")
    errs = cfg.validate()
    if errs:
        key, msg = errs[0].split(": ", 1)
        raise key_error(f"model.{key}", msg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    """The checks that relate several keys (types and choices are the dataclasses' own)."""

    def fail(key: str, msg: str):
        raise key_error(key, msg)

    o, r = cfg.optim, cfg.run
    if o.lr <= 0:
        fail("optim.lr", f"must be > 0, got {o.lr}")
    if not 0 <= o.min_lr <= o.lr:
        fail("optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")
    if o.warmup_steps < 0:
        fail("optim.warmup_steps", "must be >= 0")
    if o.weight_decay < 0:
        fail("optim.weight_decay", "must be >= 0")
    if not all(0 <= b < 1 for b in o.betas):
        fail("optim.betas", f"must be in [0, 1), got {list(o.betas)}")
    if not 0 < o.decay_fraction <= 1:
        fail("optim.decay_fraction", f"must be in (0, 1], got {o.decay_fraction}")
    if o.grad_clip < 0:
        fail("optim.grad_clip", "must be >= 0 (0 disables clipping)")
    g = r.guard
    if g.spike_factor <= 1:
        fail("run.guard.spike_factor", f"must be > 1, got {g.spike_factor}")
    if g.window <= 0:
        fail("run.guard.window", "must be > 0")
    if g.max_rewinds <= 0:
        fail("run.guard.max_rewinds", "must be > 0")
    for k in ("max_steps", "stop_after", "save_every", "eval_every"):
        if getattr(r, k) < 0:
            fail(f"run.{k}", "must be >= 0")
    if r.peak_tflops < 0:
        fail("run.peak_tflops", "must be >= 0 (0 = from the device)")
    if r.log_every <= 0:
        fail("run.log_every", "must be > 0")
    if r.keep_last <= 0:
        fail("run.keep_last", "must be > 0")
    if r.train_timeout_s < 0:
        fail("run.train_timeout_s", "must be >= 0 (0 = the start-up timeout, 30 minutes)")
    if r.upload_to and "://" not in r.upload_to:
        fail("run.upload_to", f"expected a bucket URL like s3://bucket/runs/NAME, got {r.upload_to!r}")
