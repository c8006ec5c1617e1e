"""A family of runs: one trunk trained once, branches that continue it (TinyLlama v1.1's shape).

A family mix (a spec with `[[branches.NAME.stages]]`) locks the trunk's schedule and one per
branch; every branch's batches equal the trunk's before the branch point and each corpus's
stream continues from the trunk's cursor after it. This module is the trainer's one owner of
what that means for a run:

- `branch = "NAME"` in the train config trains branch NAME (its whole schedule, from step 0,
  or from `branch_from`); unset on a family mix, the run is the trunk, which ends at the
  branch point with a committed checkpoint at exactly that step.
- `branch_from = "PATH"` (a trunk run dir, its checkpoints dir or one `step-N/` at or before the
  branch point) starts a branch run in its own `out` from that checkpoint: weights, optimizer,
  the guard's state and RNG. The trunk's dir is only read: never written, pruned or locked.
  Refused in one line naming both sides: a checkpoint of another family (another mix), of
  another model shape, of another branch, or after the branch point.
- The lr schedule is the family's (`optim.lr_at` with `Family.lr_family`), so trunk + branch
  trains step for step like the branch straight through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tinyllama.errors import CheckpointError, SpecError
from tinyllama.storage import is_url
from tinyllama.train.checkpoint import mix_identity, resolve, verify


@dataclass(frozen=True)
class Family:
    """Where a run stands in its mix's family."""

    branch: str | None  # None: the trunk
    branch_step: int  # the trunk's number of steps (the first step that is a branch's own)
    horizon: int  # the longest branch's steps: the span of the family's lr schedule
    own_steps: int | None  # this branch's steps (None for the trunk)

    @property
    def lr_family(self) -> tuple[int, int | None]:
        return self.branch_step, self.own_steps

    def describe(self) -> str:
        where = f"branch {self.branch}" if self.branch else "the trunk"
        return f"{where} of a family (branch point: step {self.branch_step})"


def family_of(cfg, source) -> Family | None:
    """The run's place in its mix's family; None for a plain mix (or a stand-in source). A
    family run refuses `run.max_steps` (the lr schedule is the family's: end early with
    `run.stop_after`); a WSD decay must start after the branch point in every branch."""
    lock = getattr(source, "lock", None) or {}
    branches = lock.get("branches") or {}
    if not branches:
        if cfg.branch is not None:
            raise SpecError(f"{cfg.source}: key 'branch': {cfg.mix} is a plain mix, not a family (it has no "
                            f"branches); unset `branch`")
        if cfg.branch_from is not None:
            raise SpecError(f"{cfg.source}: key 'branch_from': {cfg.mix} is a plain mix, not a family; to "
                            f"continue another run's checkpoint use --anneal-from or import-hf")
        return None
    if cfg.branch is None and cfg.branch_from is not None:
        raise SpecError(f"{cfg.source}: key 'branch_from': needs `branch` (one of {', '.join(sorted(branches))})")
    if cfg.run.max_steps:
        raise SpecError(f"{cfg.source}: key 'run.max_steps': {cfg.mix} is a family, whose lr schedule spans its "
                        f"branches; set run.max_steps = 0 and end a run early with run.stop_after")
    fam = Family(branch=cfg.branch, branch_step=int(lock["branch_step"]),
                 horizon=max(int(b["num_steps"]) for b in branches.values()),
                 own_steps=int(branches[cfg.branch]["num_steps"]) if cfg.branch else None)
    if cfg.optim.schedule == "wsd":
        from tinyllama.train.optim import wsd_decay_start

        for name, b in sorted(branches.items()):
            start = wsd_decay_start(cfg, int(b["num_steps"]))
            if start < fam.branch_step:
                raise SpecError(
                    f"{cfg.source}: key 'optim.decay_fraction': branch {name}'s decay would start at step {start}, "
                    f"inside the trunk (branch point: step {fam.branch_step}); lower it so every branch decays "
                    f"after the branch point")
    return fam


def branch_origin(cfg, fam: Family | None, mix: dict | None, resume: bool) -> dict | None:
    """Where a branch run starts: {"path", "step", "branch_step"} of the trunk checkpoint
    `branch_from` names, checked against this run (same family, model shape, a trunk or this
    branch's checkpoint, at or before the branch point). On `--resume` the run dir's
    train-config.json says (a branch killed before its first checkpoint restarts from it).
    None when the run does not branch."""
    if resume:
        recorded = Path(cfg.out) / "train-config.json"
        if recorded.is_file():
            return json.loads(recorded.read_text(encoding="utf-8")).get("branched_from")
    if fam is None or not cfg.branch_from:
        return None
    key = f"{cfg.source}: key 'branch_from'"
    remote = is_url(cfg.branch_from)
    try:
        # a fetched copy is named relative to out, as out is: each node has one when they do not share out
        path = _fetched(cfg) if remote else resolve(Path(cfg.branch_from)).resolve()
    except CheckpointError as e:
        raise CheckpointError(f"{key}: {e}") from None
    if not remote and Path(cfg.out).resolve() in path.parents:
        raise SpecError(f"{key}: {path} is inside this run's out dir {cfg.out}; a branch starts in its own dir")
    why = verify(path)
    if why is not None:
        raise CheckpointError(f"{key}: {path}: {why}")
    trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    step = int(trainer["step"])
    theirs = trainer.get("mix") or {}
    imported_alone = trainer.get("imported_from") and not theirs  # import-hf without a config: no mix to compare
    if mix and not imported_alone and theirs.get("identity") != mix.get("identity"):
        raise CheckpointError(
            f"{key}: {path} was trained on mix {theirs.get('name')!r} (identity {str(theirs.get('identity'))[:12]}), "
            f"this branch's mix is {mix.get('name')!r} ({cfg.mix}, identity {str(mix.get('identity'))[:12]}): "
            f"another family")
    if trainer.get("branch") not in (None, cfg.branch):
        raise CheckpointError(f"{key}: {path} is a checkpoint of branch {trainer['branch']!r}, not of the trunk "
                              f"(this run is branch {cfg.branch!r})")
    if step > fam.branch_step:
        raise CheckpointError(f"{key}: {path} is at step {step}, after the branch point (step {fam.branch_step}) "
                              f"of {cfg.mix}; branch from a trunk checkpoint at or before it")
    return {"path": str(path), "step": step, "branch_step": fam.branch_step}


def _fetched(cfg) -> Path:
    """Where a bucket `branch_from` is kept: OUT/.branch_from/step-N (fetched and verified)."""
    from tinyllama.train.remote import local_checkpoint

    return local_checkpoint(cfg.branch_from, Path(cfg.out) / ".branch_from")


def fetch_branch_from(cfg, d) -> None:
    """Collective: a bucket `branch_from` (s3://.../runs/trunk, or one of its step-N) is fetched
    before any rank reads it, by rank 0 (by each node's local rank 0 when the nodes do not share
    out); every rank learns the outcome."""
    from tinyllama.errors import TinyllamaError
    from tinyllama.train.parallel import all_gather_objects

    if not is_url(cfg.branch_from):
        return
    why = None
    if d.leads_out:
        try:
            _fetched(cfg)
        except TinyllamaError as e:
            why = f"{cfg.source}: key 'branch_from': {e}"
    whys = [w for w in all_gather_objects(why) if w]
    if whys:
        raise CheckpointError(whys[0])


__all__ = ["Family", "branch_origin", "family_of", "fetch_branch_from", "mix_identity"]
