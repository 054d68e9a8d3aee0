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


def chain_regularizer(log_alpha: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Nested expected-L0 penalty: sum_k weights_k * prod_{j<=k} P(z_j > 0)."""
    return (weights * torch.cumprod(prob_open(log_alpha), dim=0)).sum()
