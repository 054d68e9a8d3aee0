"""Hard-concrete gates (Louizos et al. 2018): sampling, P(z > 0) and the one test-time rule."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

TEMPERATURE = 2.0 / 3.0
GAMMA, ZETA = -0.1, 1.1
# log(-gamma / zeta): P(z > 0) = sigmoid(log_alpha - temperature * log(-gamma / zeta))
_OPEN_SHIFT = -TEMPERATURE * math.log(-GAMMA / ZETA)  # = 1.5986
# A gate is deterministically on iff P(z = 0) < 0.34  <=>  log_alpha > -0.935.
CLOSED_PROBABILITY = 0.34
OPEN_THRESHOLD = math.log(1.0 - CLOSED_PROBABILITY) - math.log(CLOSED_PROBABILITY) - _OPEN_SHIFT
INIT_OPEN = 6.0
# Bayesian Bits' hard-off rule: a gate at or below this is exactly 0 in training and the levels above it are not
# computed (a dead level). Between it and OPEN_THRESHOLD a gate is closed but alive: it still gets gradients.
HARD_OFF = -2.0
INIT_CLOSED = -1.5  # levels above the initial width: closed, alive (the task can still open them)


_generator: torch.Generator | None = None


@contextlib.contextmanager
def sampling_generator(generator: torch.Generator | None) -> Iterator[None]:
    """Draw gate samples from `generator` inside the block (default: torch's global generator).

    Distributed training seeds one identically on every rank, so all ranks sample the same gates
    while dropout (global generator) still differs per rank.
    """
    global _generator
    previous, _generator = _generator, generator
    try:
        yield
    finally:
        _generator = previous


def sample(log_alpha: torch.Tensor) -> torch.Tensor:
    """One stochastic training sample per element of log_alpha, in [0, 1] with exact 0/1 mass."""
    if _generator is None:
        u = torch.rand_like(log_alpha)
    else:
        u = torch.rand(log_alpha.shape, generator=_generator, dtype=log_alpha.dtype, device=_generator.device)
        u = u.to(log_alpha.device)
    u = u.clamp(1e-6, 1.0 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / TEMPERATURE)
    return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def boundary(log_alpha: torch.Tensor) -> torch.Tensor:
    """The gates of a nested chain that can change the deterministic width now: the last open gate of the open
    prefix (closing it halves the width) and the first closed one (opening it doubles the width)."""
    n = nested_open_count(log_alpha.detach())
    at = torch.zeros(log_alpha.shape, dtype=torch.bool, device=log_alpha.device)
    if n:
        at[n - 1] = True
    if n < len(log_alpha):
        at[n] = True
    return at


def boundary_reach(log_alpha: torch.Tensor) -> tuple[int, ...]:
    """The cumulative products M_i = z_1 ... z_i of a straight-through chain whose gradient reaches a boundary
    gate (the others have a closed factor besides it, or depend on no boundary gate): M of the last open gate,
    and M of the first closed one and of the open gates right after it."""
    open_ = is_open(log_alpha.detach()).tolist()
    n = nested_open_count(log_alpha.detach())
    reach = [n - 1] if n else []
    if n < len(open_):
        reach.append(n)
        i = n + 1
        while i < len(open_) and open_[i]:
            reach.append(i)
            i += 1
    return tuple(reach)


def chain_probabilities(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) of a nested chain, differentiable only at its boundary gates: a chain moves one level at a time,
    so a price cannot shut the levels below the top one before the top one has closed (no cascades)."""
    p = prob_open(log_alpha)
    return torch.where(boundary(log_alpha), p, p.detach())


def straight_through(log_alpha: torch.Tensor) -> torch.Tensor:
    """The test-time values (exactly 0 or 1) of a nested chain's gates in the forward pass; the gradient of
    P(z > 0) at its boundary gates in the backward pass. Training then runs the exported model, and the chain
    still learns what narrowing or widening it by one level is worth."""
    p = chain_probabilities(log_alpha)
    return deterministic(log_alpha) + (p - p.detach())


def prob_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0), differentiable in log_alpha."""
    return torch.sigmoid(log_alpha + _OPEN_SHIFT)


def is_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """The single test-time definition of an open gate, used by eval, the export plan and the audit."""
    return log_alpha > OPEN_THRESHOLD


def deterministic(log_alpha: torch.Tensor) -> torch.Tensor:
    """Test-time gate value: exactly 1.0 if open, else 0.0."""
    return is_open(log_alpha).to(log_alpha.dtype)


def nested_open_count(log_alpha: torch.Tensor) -> int:
    """Number of consecutive deterministically-open gates from the start of a nested chain."""
    open_ = is_open(log_alpha).to(torch.int64)
    return int(torch.cumprod(open_, dim=0).sum().item())
