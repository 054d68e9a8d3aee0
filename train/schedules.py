"""The phases of a run and its learning-rate schedule: pure functions of the step, so resuming needs only it.

B-LoRA runs in three phases (other methods have no gates and only the first):
  [0, gate_start)       warm-up: adapters and head learn at the initial widths; gates and price wait
  [gate_start, main)    gates learn under the BOP price
  [main, total)         phase 2: gates frozen at their test-time values (after the budget is enforced)
The learning rate of adapters, head and ranges warms up linearly and decays linearly to 0 over the whole run
(default), or, with `phase2_lr` (a fraction of --lr), decays to 0 at the end of phase 1 and restarts in phase 2
at phase2_lr, decaying to 0 again. Gates keep their own constant learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phases:
    total: int
    gate_start: int
    main: int  # first step of phase 2 (== total without one)
    warmup: int  # learning-rate warm-up steps
    phase2_lr: float | None = None

    @classmethod
    def plan(cls, total: int, learns_gates: bool, optim) -> Phases:
        """The phases of `total` steps under train.options.OptimSpec `optim`."""
        phase2 = round(optim.fixed_gate_ratio * total) if learns_gates else 0
        main = total - phase2
        gate_start = min(round(optim.gate_warmup_ratio * total), main) if learns_gates else main
        return cls(total, gate_start, main, warmup_steps(total, optim.warmup_steps, optim.warmup_ratio),
                   optim.phase2_lr)

    def gates_learn(self, step: int) -> bool:
        return self.gate_start <= step < self.main

    def lr_factor(self, step: int) -> float:
        if self.phase2_lr is None or self.main == self.total:
            return lr_factor(step, self.warmup, self.total)
        if step < self.main:
            return lr_factor(step, min(self.warmup, self.main), self.main)
        return self.phase2_lr * (self.total - step) / (self.total - self.main)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    remaining = total_steps - warmup_steps
    return max(0.0, (total_steps - step) / remaining) if remaining > 0 else 1.0


def warmup_steps(total_steps: int, steps: int | None, ratio: float) -> int:
    return steps if steps is not None else int(ratio * total_steps)
