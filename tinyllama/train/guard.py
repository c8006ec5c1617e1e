"""The loss-spike / non-finite guard (`[run.guard]`, on by default).

Before an optimizer step is applied, the global batch's loss is checked: NaN / inf (or a
non-finite gradient norm), or above `spike_factor` x the median loss of the last `window`
applied steps, and the update is not applied. The run then rewinds to its last committed
checkpoint (weights, optimizer, RNG; no checkpoint yet: the initial weights) and replays from
there; the offending step goes on the skip list.

Skip semantics: a step on the skip list is consumed without a forward or an update. The data
stream is unchanged (step s + 1 still gets batch s + 1, so every other step sees exactly the
batch it would have), and the lr schedule does not move. The skip list, the loss history and
the rewind count are in every later checkpoint's `trainer.json` ("guard"), so a resumed or
repeated run skips the same steps and judges spikes against the same medians: the guard is a
function of the data, the weights and the config, nothing else.

After `max_rewinds` rewinds with no step applied in between, the next failing step stops the
run, naming the steps.
"""

from __future__ import annotations

import math
import statistics

from tinyllama.errors import TrainingError


class Guard:
    def __init__(self, cfg):
        self.cfg = cfg.run.guard
        self.skip: list[int] = []
        self.history: list[float] = []  # losses of the last `window` applied steps
        self.pending: list[int] = []  # steps rewound since the last committed checkpoint

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def state(self) -> dict:
        return {"skip": list(self.skip), "history": list(self.history), "pending": list(self.pending)}

    def load(self, trainer: dict | None, keep_skips: bool = False) -> None:
        """The guard's state from a checkpoint's trainer.json (none: a fresh start). A rewind
        keeps the skips it has learnt since (`keep_skips`)."""
        st = (trainer or {}).get("guard") or {}
        skips = set(st.get("skip", [])) | (set(self.skip) if keep_skips else set())
        self.skip = sorted(skips)
        self.history = [float(x) for x in st.get("history", [])]
        if not keep_skips:
            self.pending = list(st.get("pending", []))

    def skips(self, step: int) -> bool:
        return step in self.skip

    def verdict(self, loss: float, grad_finite: bool) -> str | None:
        """None when the step may be applied, else why not (one phrase)."""
        if not (grad_finite and math.isfinite(loss)):
            return "the loss or gradient norm is not finite"
        if not self.enabled or len(self.history) < self.cfg.window:
            return None
        median = statistics.median(self.history)
        if loss > self.cfg.spike_factor * median:
            return (f"loss {loss:.4f} > {self.cfg.spike_factor:g} x the median {median:.4f} "
                    f"of the last {len(self.history)} steps")
        return None

    def applied(self, loss: float) -> None:
        self.history = (self.history + [loss])[-self.cfg.window :]
        self.pending = []

    def rewound(self, step: int, why: str) -> None:
        """Step `step` was not applied (`why`): it joins the skip list; too many rewinds in a
        row stop the run."""
        self.skip = sorted(set(self.skip) | {step})
        self.pending.append(step)
        if len(self.pending) > self.cfg.max_rewinds:
            raise TrainingError(
                f"step {step}: {why}; steps {', '.join(map(str, self.pending))} failed in a row, with no "
                f"step applied in between (run.guard.max_rewinds = {self.cfg.max_rewinds}): the update was not "
                f"applied and the run stopped (lower optim.lr or raise optim.warmup_steps, then --resume)"
            )
