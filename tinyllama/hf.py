"""Hugging Face interop: `tinyllama export`, `tinyllama import-hf`, and `load_model`.

    export      a training checkpoint (DCP, any world size)  ->  a `LlamaForCausalLM` dir:
                model.safetensors, config.json, generation_config.json, tokenizer.json,
                tokenizer_config.json, special_tokens_map.json (`transformers` loads it offline)
    import-hf   a Hugging Face Llama dir (TinyLlama's own layout: *.safetensors or
                pytorch_model*.bin, optionally sharded with an index, + config.json)
                ->  RUN_DIR/checkpoints/step-N/, the trainer's layout, so that
                `tinyllama train --config ... --resume` continues from it (v1.1's stage-2 start)

Our module names are Hugging Face's without the `model.` prefix (see `tinyllama.model`), so
both directions are a renaming: no tensor is changed, and ours -> HF -> ours is bit-exact.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from tinyllama import fault
from tinyllama.errors import CheckpointError, InputError, SpecError, StorageError, TinyllamaError
from tinyllama.lock import LOCK_NAME, exclusive_dir_lock
from tinyllama.model import (
    Llama,
    ModelConfig,
    build_model,
    config_from_hf,
    from_hf_state_dict,
    hf_config,
    hf_state_dict,
)
from tinyllama.storage import is_url
from tinyllama.train import checkpoint as ckpt

EXPORT_MARKER = "tinyllama-export.json"  # marks a dir this command wrote (and may replace with --force)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- reading either kind of dir -------------------------------------------------------------


def is_hf_dir(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "trainer.json").is_file()


def read_hf_config(path: str | os.PathLike[str]) -> dict:
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not a Hugging Face model dir (no config.json)") from None
    except ValueError as e:
        raise InputError(f"{path / 'config.json'}: invalid JSON: {e}") from None
    return cfg


def model_config_from_hf(path: str | os.PathLike[str], hf: dict | None = None) -> ModelConfig:
    """Our `ModelConfig` for an HF Llama config, refusing what our model cannot represent."""
    path = Path(path)
    src = path / "config.json"
    hf = dict(read_hf_config(path) if hf is None else hf)
    arch = hf.get("architectures") or ["LlamaForCausalLM"]
    if hf.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in arch:
        raise InputError(f"{src}: not a Llama model (model_type={hf.get('model_type')!r}, architectures={arch})")
    # transformers >= 5 writes the RoPE base inside `rope_parameters`.
    rp = hf.get("rope_parameters") or {}
    if "rope_theta" not in hf and "rope_theta" in rp:
        hf["rope_theta"] = rp["rope_theta"]
    scaling = hf.get("rope_scaling") or ({k: v for k, v in rp.items() if k != "rope_theta"} if rp else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise InputError(f"{src}: key 'rope_scaling' {scaling} is not supported (plain RoPE only)")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if key in hf and hf[key] != ok:
            raise InputError(f"{src}: key '{key}' = {hf[key]!r} is not supported (Llama 2 uses {ok!r})")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        raise InputError(f"{src}: key 'head_dim' = {head_dim} != hidden_size / num_attention_heads")
    try:
        cfg = config_from_hf(hf)
    except KeyError as e:
        raise InputError(f"{src}: missing key {e}") from None
    except ValueError as e:
        raise InputError(f"{src}: {e}") from None
    errs = cfg.validate()
    if errs:
        raise InputError(f"{src}: {errs[0]}")
    return cfg


def read_hf_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of an HF dir: `model.safetensors`, sharded `*.safetensors` (with or without
    `model.safetensors.index.json`), or the older `pytorch_model*.bin` that early TinyLlama
    checkpoints use. Safetensors win when both are present (as in `transformers`)."""
    path = Path(path)
    st = sorted(path.glob("*.safetensors"))
    if st:
        from safetensors.torch import load_file

        files = st

        def loader(f):
            return load_file(str(f))
    else:
        files = sorted(path.glob("pytorch_model*.bin"))
        def loader(f):
            return torch.load(f, map_location="cpu", weights_only=True)
    if not files:
        raise InputError(f"{path}: no weights (*.safetensors or pytorch_model*.bin) next to config.json")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = loader(f)
        except Exception as e:  # noqa: BLE001  (torch.load / safetensors raise many kinds on a corrupt file: name it)
            raise InputError(f"{f}: unreadable weights: {e}") from None
        sd.update(part)
    return sd


def load_hf_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Llama:
    """An HF Llama dir as our `Llama` (fp32, eval mode)."""
    path = Path(path)
    cfg = model_config_from_hf(path)
    try:
        sd = from_hf_state_dict(read_hf_state_dict(path))
    except KeyError as e:
        raise InputError(f"{path}: {e.args[0]}") from None
    model = build_model(cfg, device, seed=None)
    _load_strict(model, {k: v.float() for k, v in sd.items()}, path)
    return model.eval()


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Llama:
    """A training checkpoint (run dir, its checkpoints/ dir, or one step-N/ dir) or a Hugging
    Face dir, as a plain fp32 `Llama` in eval mode: `model(input_ids) -> logits`."""
    if is_hf_dir(path):
        return load_hf_model(path, device)
    return ckpt.model_from_checkpoint(resolve_checkpoint(path), device)


def _load_strict(model: Llama, sd: dict[str, torch.Tensor], src: Path) -> None:
    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise InputError(
            f"{src}: weights do not fit the config: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f" unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for k, v in sd.items():
        if v.shape != want[k].shape:
            raise InputError(f"{src}: tensor {k!r} has shape {tuple(v.shape)}, the config says {tuple(want[k].shape)}")
    model.load_state_dict(sd, strict=True)


# ---- checkpoint metadata ----------------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run dir, its checkpoints/ dir or a step-N/ dir -> the committed step-N/ dir."""
    try:
        return ckpt.resolve(Path(path))
    except CheckpointError:
        raise InputError(
            f"{path}: neither a training checkpoint (step-N/ with trainer.json) nor a Hugging Face dir (config.json)"
        ) from None


def trainer_state(path: str | os.PathLike[str]) -> dict:
    p = resolve_checkpoint(path) / "trainer.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{p}: invalid JSON: {e}") from None


def find_tokenizer(path: str | os.PathLike[str]) -> Path | None:
    """The tokenizer.json that goes with a model: an HF dir's own, else the one of the mix the
    checkpoint was trained on (trainer.json records the train config, hence the mix dir)."""
    path = Path(path)
    if is_hf_dir(path):
        t = path / "tokenizer.json"
        return t if t.is_file() else None
    mix = (trainer_state(path).get("config") or {}).get("mix")
    if not mix:
        return None
    if is_url(mix):  # a mix in a bucket: its tokenizer.json, fetched next to the mix cache
        from tinyllama.data.remote_mix import cache_root
        from tinyllama.storage import bucket, join

        b, key = bucket(mix)
        t = cache_root() / "tokenizers" / (hashlib.sha256(mix.encode()).hexdigest()[:16] + ".json")
        if not t.is_file():
            b.download(join(key, "tokenizer.json"), str(t))
        return t
    mix = Path(mix)
    rel = "tokenizer.json"
    if (mix / "mix.json").is_file():
        rel = json.loads((mix / "mix.json").read_text(encoding="utf-8")).get("tokenizer", rel)
    t = mix / rel
    return t if t.is_file() else None


def _special_ids(tok_path: Path) -> tuple[int, int, int]:
    """(bos, eos, unk) as the Rust core decides them (the ids the build wrote around every
    document), Llama's 1 / 2 / 0 where the tokenizer has none."""
    from tinyllama.data.tokenizer import Tokenizer

    bos, eos, unk = Tokenizer(tok_path).special_ids()
    return (1 if bos is None else bos, 2 if eos is None else eos, 0 if unk is None else unk)


def _read_tokenizer_bytes(path: Path) -> bytes:
    """tokenizer.json bytes, zstd or not by the file's magic number (the core's one reader)."""
    from tinyllama.data.tokenizer import read_tokenizer_json

    return read_tokenizer_json(path)


# ---- export -----------------------------------------------------------------------------------


def export(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write the HF Llama layout for `checkpoint` into `out`; returns `out`.

    `tokenizer` defaults to the mix's tokenizer.json (found via the checkpoint's trainer.json).
    `dtype` is the safetensors dtype (float32 keeps the logits bit-comparable with ours).
    `out` must not exist or be empty; a previous export there is replaced only with `force`.
    """
    if dtype not in _DTYPES:
        raise SpecError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    check_export_target(out, force)
    if is_url(str(checkpoint)):  # a bucket checkpoint (s3://.../runs/NAME or .../step-N): fetched first
        from tinyllama.train.remote import fetch

        with tempfile.TemporaryDirectory(prefix="tinyllama-export-") as tmp:
            return export(fetch(str(checkpoint), Path(tmp)), out, tokenizer, dtype, force)
    src = Path(checkpoint)
    model = load_model(src)
    tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(src)
    if tok_path is None or not tok_path.is_file():
        raise InputError(
            f"{src}: cannot find the tokenizer (the mix it was trained on is gone?): pass --tokenizer PATH"
            if tokenizer is None
            else f"{tok_path}: tokenizer not found"
        )
    return save_hf(model, out, tok_path, dtype, force=force)


def check_export_target(out: str | os.PathLike[str], force: bool) -> None:
    """`out` may be missing or empty; a previous export (it has the marker file) only with
    `force`; anything else is refused: an export never deletes what it did not create."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out}: exists and is not a directory; export refused")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise StorageError(f"{out}: not empty and not a previous export; export refused (nothing was changed): "
                           f"choose a new --out")
    if not force:
        raise StorageError(f"{out}: holds a previous export; pass --force to replace it")


def save_hf(
    model: Llama, out: str | os.PathLike[str], tokenizer: str | os.PathLike[str], dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write `model` (a plain `Llama`) and `tokenizer` (tokenizer.json, or .json.zst) in the HF
    layout into `out`, atomically: into a fresh temp dir beside `out`, renamed into place. `out`
    must be missing or empty, or hold a previous export and `force` be given."""
    if dtype not in _DTYPES:
        raise SpecError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    check_export_target(out, force)
    tok_path = Path(tokenizer)
    tok_bytes = _read_tokenizer_bytes(tok_path)
    try:
        json.loads(tok_bytes)  # a readable tokenizer.json, named in the error otherwise
    except ValueError as e:
        raise InputError(f"{tok_path}: not a tokenizer.json: {e}") from None
    bos, eos, unk = _special_ids(tok_path)

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_killed_exports(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an export is an ordinary dir
    except OSError as e:
        raise StorageError(f"{out}: cannot create the export dir: {e.strerror or e}") from None
    try:
        _write_export(model, tmp, tok_bytes, bos, eos, unk, dtype)
        fault.reached("export-files")
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own temp dir
        raise StorageError(f"{out}: export failed: {e.strerror or e} (nothing was replaced)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


EXPORT_FILES = frozenset({"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", EXPORT_MARKER})


def _remove_killed_exports(out: Path) -> None:
    """The temp dirs a killed export to `out` left beside it (`.OUT.XXXXXXXX.tmp` being written,
    `.OUT.XXXXXXXX.old` a replaced export not yet removed): removed when they hold nothing but
    an export's files, so they are this command's own; anything else is left alone."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if (p.suffix in (".tmp", ".old") and len(p.name) == len(out.name) + 14 and p.is_dir()
                and all(f.is_file() and f.name in EXPORT_FILES for f in p.iterdir())):
            shutil.rmtree(p, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export `tmp` to `out`: a plain rename when `out` is missing or empty;
    a previous export (checked by the caller) is first renamed aside, then removed."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    ckpt.fsync_dir(out.parent)


def _write_export(model: Llama, tmp: Path, tok_bytes: bytes, bos: int, eos: int, unk: int, dtype: str) -> None:
    cfg = model.config
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(_DTYPES[dtype]).contiguous() for k, v in hf_state_dict(model).items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    config = hf_config(cfg)
    config.update(
        {
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": dtype,  # transformers < 5 reads this key, >= 5 reads "dtype"
            "dtype": dtype,
            "head_dim": cfg.head_dim,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "rope_scaling": None,
            "attention_dropout": 0.0,
            "use_cache": True,
        }
    )
    _write_json(tmp / "config.json", config)
    # No `max_length`: transformers would warn on every `generate(max_new_tokens=...)` that both
    # are set (the context length is config.json's max_position_embeddings).
    _write_json(tmp / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": unk})
    (tmp / "tokenizer.json").write_bytes(tok_bytes)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_json(
        tmp / "tokenizer_config.json",
        {
            # The generic fast class runs tokenizer.json as written, so `transformers` encodes
            # exactly as `tokenizers` and `tinyllama.Tokenizer` do. (transformers 5 maps
            # "LlamaTokenizerFast" to a class that rebuilds the pre-tokenizer and differs on
            # leading / repeated spaces, e.g. " " -> [29871] instead of Llama 2's [259].)
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "pad_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.max_seq_len,
            "padding_side": "left",
        },
    )
    _write_json(tmp / "special_tokens_map.json", specials)
    # Written last: a dir with this file is a complete export (`--force` may replace it).
    _write_json(tmp / EXPORT_MARKER, {"format": "tinyllama-hf-export", "dtype": dtype})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# ---- import -----------------------------------------------------------------------------------


def import_hf(
    hf_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    step: int = 0,
    config: str | os.PathLike[str] | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    tokens: int | None = None,
    stage: str | None = None,
) -> Path:
    """An HF Llama dir -> `run_dir/checkpoints/step-{step}/`, which `tinyllama train --resume`
    (with `out = run_dir`) continues from at schedule step `step`. Returns the step dir.

    The checkpoint holds the weights, a fresh AdamW state (zero moments, step count 0: the first
    update after resume is a first Adam step) and trainer.json. `config` is the train config the
    run will use; its model must equal the imported one (a mismatch is an error now, not a shape
    error at resume). Without it the recorded config is a default one around the HF model.
    `tokens` (tokens already trained) defaults to the mix's schedule up to `step` when the mix
    can say, else 0; it only feeds metrics. `stage` (needs `config`, whose mix is built) sets
    `step` to the first step of that stage of the mix's schedule: `stage="continual"` imports
    a stage-1 model (e.g. TinyLlama's own) to continue with the v1.1 recipe's second stage.
    """
    from tinyllama.train.config import TrainConfig, load_config

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if step < 0:
        raise SpecError(f"--step must be >= 0, got {step}")
    mcfg = model_config_from_hf(hf_dir)
    if config is not None:
        cfg = load_config(config, overrides)
        want = dataclasses.asdict(mcfg)
        have = dataclasses.asdict(cfg.model)
        diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
        if diff:
            raise SpecError(
                f"{config}: key 'model' differs from {hf_dir / 'config.json'}: "
                + ", ".join(f"{k}: config {a} vs checkpoint {b}" for k, (a, b) in diff.items())
            )
        cfg = dataclasses.replace(cfg, out=str(run_dir))
    else:
        cfg = TrainConfig(mix="", out=str(run_dir), model=mcfg)
    if stage is not None and config is None:
        raise SpecError("--stage needs --config (the train config whose mix holds the schedule)")
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()) and not _interrupted_import(run_dir):
        last = ckpt.latest_checkpoint(run_dir / "checkpoints")
        held = f"checkpoints (latest: {last.name})" if last is not None else "files"
        raise StorageError(f"{run_dir}: already holds {held}; import-hf refused (nothing was changed): "
                           f"choose a new --out")
    with exclusive_dir_lock(run_dir, "import-hf"):
        if _interrupted_import(run_dir):  # checked again under the lock: a killed import's partial save
            ckpt.clean_partial(run_dir / "checkpoints")
        return _import_into(hf_dir, run_dir, cfg, config, step, tokens, stage)


def _interrupted_import(run_dir: Path) -> bool:
    """`run_dir` holds only what a killed `import-hf` leaves: its lock and `checkpoints/` with
    nothing committed, at most a save in progress (`step-N.tmp/`). A run's dir never looks so
    (`train` writes train-config.json before its first save), so a rerun may start over there."""
    if not run_dir.is_dir():
        return False
    ck = run_dir / "checkpoints"
    rest = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    return rest == [ck] and ck.is_dir() and all(p.name.endswith(".tmp") for p in ck.iterdir())


def _import_into(hf_dir: Path, run_dir: Path, cfg, config, step: int, tokens: int | None, stage: str | None) -> Path:
    from tinyllama.train.optim import build_optimizer, lr_at

    ckpt_dir = run_dir / "checkpoints"
    # The trainer's parameter groups and hyper-parameters (as at resume), single process, CPU.
    model = build_model(cfg.model, "cpu", seed=None)
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    try:
        sd = from_hf_state_dict(read_hf_state_dict(hf_dir))
    except KeyError as e:
        raise InputError(f"{hf_dir}: {e.args[0]}") from None
    _load_strict(model, {k: v.float() for k, v in sd.items()}, hf_dir)
    # A fresh AdamW state written out explicitly with step 0: left empty, DCP's get_state_dict
    # would initialise it by running one zero-gradient step (step count 1).
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }

    total, n_tokens, mix_id, family = cfg.run.max_steps, tokens, None, None
    if stage is not None:
        import tinyllama

        # a family's branch stage (e.g. continual) is in the config's branch's schedule
        step = stage_start_step(tinyllama.Mix(cfg.mix, branch=cfg.branch), stage)
    if cfg.mix and (Path(cfg.mix) / "mix.json").is_file():
        try:
            import tinyllama
            from tinyllama.train.family import family_of

            mix = tinyllama.Mix(cfg.mix, branch=cfg.branch)
            mix_id = ckpt.mix_identity(mix.lock)
            family = family_of(cfg, mix)
            total = family.horizon if family else (total or mix.num_steps())
            if n_tokens is None:
                n_tokens = int(mix.tokens_before(step))
        except (OSError, ValueError, TinyllamaError) as e:  # metrics only: must not block the import
            warnings.warn(f"{cfg.mix}: cannot count the tokens before step {step} ({e}); recording 0", stacklevel=2)
    state = {
        "tokens": int(n_tokens or 0),
        "total_steps": total,
        "lr": lr_at(step, cfg, total, family.lr_family if family else None) if total else cfg.optim.lr,
        "branch": cfg.branch,
        "config": cfg.to_dict(),
        "imported_from": str(hf_dir.resolve()),
        "mix": mix_id,
    }
    return ckpt.save(
        ckpt_dir, step, model, opt, state, rank=0, world=1, keep_last=max(1, cfg.run.keep_last), barrier=lambda: None,
        commit_point="import-files",
    )


def stage_start_step(mix, stage: str) -> int:
    """The first optimizer step of `stage` in `mix`'s schedule (as `mix inspect` reports it)."""
    stages = mix.inspect()["stages"]
    for st in stages:
        if st["name"] == stage:
            return int(st["first_step"])
    names = ", ".join(st["name"] for st in stages)
    raise SpecError(f"{mix.path}: no stage {stage!r} in the schedule (stages: {names})")
