"""Whole-model views of an injected encoder: widths, ranks, BOPs (expected and deterministic) and activation
calibration. The prior's penalty is price x expected_bop_fraction: one objective in one unit, computed with the
audit's own cost model (bops.totals)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .bops import MacProfile, adapter_branch, fraction, totals
from .inject import wrapped_linears
from .quantizer import BayesianBitsQuantizer


def deterministic_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: m.widths() for n, m in wrapped_linears(model).items()}


def expected_widths(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (m.weight_quantizer.expected_bits(), m.input_quantizer.expected_bits())
            for n, m in wrapped_linears(model).items()}


def ranks(model: nn.Module) -> dict[str, int]:
    return {n: m.deterministic_rank() for n, m in wrapped_linears(model).items() if m.max_rank}


def adapter_branches(model: nn.Module, profile: MacProfile, expected: bool) -> dict[str, tuple]:
    """The products of adapters deployed unmerged (bops.adapter_branch), at the expected or the deterministic
    rank and input width."""
    out = {}
    for name, m in wrapped_linears(model).items():
        if not (m.unmerged and m.max_rank):
            continue
        d_out, d_in = m.base.weight.shape
        tokens = profile.linears.get(name, 0) // (d_in * d_out)
        rank = m.expected_rank() if expected else m.deterministic_rank()
        a_bits = m.input_quantizer.expected_bits() if expected else m.input_quantizer.effective_bits()
        out.update(adapter_branch(name, tokens, d_in, d_out, rank, a_bits))
    return out


def expected_bops(model: nn.Module, profile: MacProfile) -> dict:
    return totals(profile, expected_widths(model), adapter_branches(model, profile, expected=True))


def deterministic_bops(model: nn.Module, profile: MacProfile) -> dict:
    return totals(profile, deterministic_widths(model), adapter_branches(model, profile, expected=False))


def expected_bop_fraction(model: nn.Module, profile: MacProfile) -> torch.Tensor:
    """E[BOPs] / BOPs of the fp32 model, differentiable in the gates: the penalty is price x this."""
    return fraction(expected_bops(model, profile))


def deterministic_bop_fraction(model: nn.Module, profile: MacProfile) -> float:
    """What the audit will count for the exported model, as a fraction of the fp32 model's BOPs."""
    return float(fraction(deterministic_bops(model, profile)))


def input_quantizers(model: nn.Module) -> list[BayesianBitsQuantizer]:
    return [m.input_quantizer for m in wrapped_linears(model).values()]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[dict]) -> int:
    """Set every activation range from statistics over several batches; returns the batch count."""
    quantizers = input_quantizers(model)
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.calibrating = True
    count = 0
    try:
        for batch in batches:
            model(**batch)
            count += 1
    finally:
        for q in quantizers:
            q.calibrating = False
            q.finish_calibration()
        model.train(was_training)
    return count
