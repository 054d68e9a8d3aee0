"""Learning-rate and regularizer schedules: pure functions of the step, so resuming needs only the step."""

from __future__ import annotations


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    remaining = total_steps - warmup_steps
    return max(0.0, (total_steps - step) / remaining) if remaining > 0 else 1.0


def regularizer_factor(step: int, warmup_steps: int) -> float:
    """0 for the first `warmup_steps` steps (the adapters learn before gates are pushed shut), then 1.

    A hard switch rather than a ramp: Adam's updates do not scale with the gradient, so a gate the task does
    not defend would move at full speed under even a tiny ramped penalty.
    """
    return 0.0 if step < warmup_steps else 1.0


def warmup_steps(total_steps: int, steps: int | None, ratio: float) -> int:
    return steps if steps is not None else int(ratio * total_steps)
