"""Where a run's records go besides `metrics.jsonl`: `run.trackers` = ["tensorboard", "wandb"].

TensorBoard (out/tb, the default) is written by `metrics.MetricsLogger` itself. Weights & Biases
(`"wandb"`, configured by `[run.wandb]` and the usual `WANDB_*` environment; the optional extra
`wandb`) gets every record metrics.jsonl gets, at its step, from rank 0 only:

- a step record as it is (`loss`, `lr`, `tokens`, `tokens_per_s`, `mfu`, `loss/<corpus>`, ...);
- a validation record as it is (`val/loss`, `val/loss/<corpus>`);
- a guard event as `event/<name>` = 1 with its fields under `event/<name>/...` (so a rewind's
  `grad_norm` is not taken for the step's); a list is sent as its length.

The run's config is the train config with the mix's identity, the family branch and where the
run started from. The W&B run id is kept in `out/wandb-run.json`, so `--resume` continues the
same W&B run; the file also records, per kind of record, the last step sent. A record at or
before that step is a replay (a resume or a guard rewind repeats the steps after its checkpoint,
and deterministically: the same batches give the same losses) and is not sent again, so W&B
never holds a step twice. A family's trunk and its branches share a group: the trunk's
`[run.wandb] group`, else "<mix name>-<trunk run dir name>"; a branch reads it from the trunk's
run dir (only reads it).

W&B is an add-on to a run, never a reason for it to stop: the package missing, no credentials,
a service that cannot be reached or fails later is one warning line, and training goes on with
metrics.jsonl (and TensorBoard).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

STATE = "wandb-run.json"


def record_kind(record: dict) -> str:
    if "event" in record:
        return f"event:{record['event']}"
    return "val" if any(k.startswith("val/") for k in record) else "train"


def wandb_payload(record: dict) -> dict:
    """What W&B gets of a metrics.jsonl record (without its step)."""
    event = record.get("event")
    out: dict = {f"event/{event}": 1} if event else {}
    for k, v in record.items():
        if k in ("step", "event") or v is None or isinstance(v, dict):
            continue
        if isinstance(v, (list, tuple)):
            v = len(v)
        out[f"event/{event}/{k}" if event else k] = v
    return out


def family_group(cfg, plan) -> str | None:
    """The default W&B group: shared by a family's trunk and the branches started from it;
    None for any other run."""
    family = getattr(plan, "family", None)
    name = (plan.mix or {}).get("name") or "mix"
    if family is None:
        return None
    if family.branch is None:  # the trunk
        return f"{name}-{Path(cfg.out).resolve().name}"
    origin = getattr(plan, "branched_from", None)
    if not origin:
        return None  # a branch trained straight through: no trunk to share a group with
    ckpt = Path(origin["path"])
    trunk = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        recorded = json.loads((trunk / STATE).read_text(encoding="utf-8")).get("group")
    except (OSError, ValueError):
        recorded = None
    return recorded or f"{name}-{trunk.name}"


class WandbTracker:
    """One W&B run, fed by `MetricsLogger` (`log`, `close`)."""

    def __init__(self, run, state_path: Path, state: dict, say: Callable[[str], None]):
        self.run, self.state_path, self.state, self.say = run, state_path, state, say

    @classmethod
    def open(cls, cfg, plan, resume: bool, say: Callable[[str], None], world: int = 1) -> WandbTracker | None:
        """The W&B run of this run dir (continued on `resume`), or None with one warning line."""
        try:
            import wandb
        except ImportError:
            say("warning: run.trackers: wandb is not installed (pip install 'tinyllama-forge[wandb]'); "
                 "training goes on without W&B")
            return None
        out = Path(cfg.out)
        state_path = out / STATE
        state: dict = {}
        if resume and state_path.is_file():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
        w = cfg.run.wandb
        state.setdefault("id", uuid.uuid4().hex[:12])
        state["group"] = w.group or state.get("group") or family_group(cfg, plan)
        state.setdefault("sent", {})
        mode = w.mode or os.environ.get("WANDB_MODE")
        if mode == "disabled":
            return None
        try:
            why = _no_credentials(wandb, mode)
            if why:
                say(f"warning: run.trackers: wandb: {why}; training goes on without W&B")
                return None
            config = {**cfg.to_dict(), "mix_identity": plan.mix, "world": world,
                      **(plan.trainer_state() if hasattr(plan, "trainer_state") else {})}
            run = wandb.init(
                project=w.project or os.environ.get("WANDB_PROJECT") or "tinyllama", entity=w.entity,
                name=w.name or out.resolve().name, group=state["group"], mode=w.mode, id=state["id"],
                resume="allow", dir=str(out), config=config, allow_val_change=True,
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as e:  # noqa: BLE001  (a service that cannot be reached raises many kinds)
            say(f"warning: run.trackers: wandb could not start a run ({_short(e)}); training goes on without W&B")
            return None
        tracker = cls(run, state_path, state, say)
        tracker._save_state()
        where = getattr(run, "url", None) if mode != "offline" else None
        say(f"wandb: run {run.id} ({state['group'] or 'no group'})" + (f" {where}" if where else
             f" offline in {out / 'wandb'} (upload with `wandb sync`)"))
        return tracker

    def log(self, record: dict) -> None:
        if self.run is None:
            return
        step, kind = int(record["step"]), record_kind(record)
        sent = self.state["sent"]
        if step <= sent.get(kind, -1) or step < max(sent.values(), default=-1):
            return  # a replayed step (resume, rewind): W&B has it already
        payload = wandb_payload(record)
        if not payload:
            return
        try:
            self.run.log(payload, step=step)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        sent[kind] = step
        self._save_state()

    def close(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        self.run = None

    def _fail(self, e: BaseException) -> None:
        self.say(f"warning: run.trackers: wandb failed ({_short(e)}); training goes on without W&B")
        self.run = None

    def _save_state(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)


def _no_credentials(wandb, mode: str | None) -> str | None:
    """Why an online run cannot start (no API key), found without W&B's interactive login
    prompt, which would stop an unattended run on a terminal; None when it can, or when this
    version of wandb does not let us check (its own error then says why)."""
    if mode in ("offline", "disabled", "dryrun"):
        return None
    try:
        settings_mode = wandb.setup().settings.mode
        if mode is None and settings_mode in ("offline", "disabled", "dryrun"):
            return None
        from wandb.sdk.wandb_login import _login

        ok, _ = _login(prompt=False, _silent=True)
    except (ImportError, AttributeError, TypeError):
        return None
    return None if ok else "no API key (run `wandb login`, set WANDB_API_KEY, or set [run.wandb] mode = \"offline\")"


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


def open_trackers(cfg, plan, resume: bool, say: Callable[[str], None], world: int = 1) -> list:
    """The trackers `run.trackers` names beyond TensorBoard (which `MetricsLogger` writes)."""
    trackers = []
    if "wandb" in cfg.run.trackers:
        t = WandbTracker.open(cfg, plan, resume, say, world)
        if t is not None:
            trackers.append(t)
    return trackers


def open_run_log(cfg, plan, source, d, step: int, tokens: int, resume: bool):
    """The run's `MetricsLogger` (rank 0 writes; the others hold a disabled one): metrics.jsonl,
    TensorBoard when `run.trackers` has it, the step line (`progress.py`) and W&B."""
    from tinyllama.train.metrics import MetricsLogger
    from tinyllama.train.progress import run_progress

    log = MetricsLogger(cfg.out, d.is_main, resume_step=step, tensorboard="tensorboard" in cfg.run.trackers,
                        progress=run_progress(source, plan.end, step, tokens, d.is_main))
    if d.is_main:
        log.trackers = open_trackers(cfg, plan, resume, log.message, d.world)
    return log
