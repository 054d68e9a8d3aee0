"""Whole-model views of an injected encoder: widths, ranks, regularizers and activation calibration."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .bops import MacProfile, totals
from .config import BLoRAConfig
from .inject import wrapped_linears
from .quantizer import BayesianBitsQuantizer


def deterministic_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: m.widths() for n, m in wrapped_linears(model).items()}


def expected_widths(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (m.weight_quantizer.expected_bits(), m.input_quantizer.expected_bits())
            for n, m in wrapped_linears(model).items()}


def ranks(model: nn.Module) -> dict[str, int]:
    return {n: m.deterministic_rank() for n, m in wrapped_linears(model).items() if m.max_rank}


def regularizer(model: nn.Module, profile: MacProfile, cfg: BLoRAConfig) -> torch.Tensor:
    """Sum of the BOP-weighted bit-chain penalties and the nested rank penalties."""
    total = torch.zeros(())
    top = profile.max_quantized_macs
    for name, m in wrapped_linears(model).items():
        fraction = profile.linears.get(name, 0) / top
        total = total + m.weight_quantizer.regularizer(fraction, cfg.bops_weight)
        total = total + m.input_quantizer.regularizer(fraction, cfg.bops_weight)
        total = total + m.rank_regularizer(cfg.rank_weight)
    return total


def expected_bops(model: nn.Module, profile: MacProfile) -> dict:
    return totals(profile, expected_widths(model))


def deterministic_bops(model: nn.Module, profile: MacProfile) -> dict:
    return totals(profile, deterministic_widths(model))


def input_quantizers(model: nn.Module) -> list[BayesianBitsQuantizer]:
    return [m.input_quantizer for m in wrapped_linears(model).values()]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[dict]) -> int:
    """Set every activation range from max-abs statistics over several batches; returns the batch count."""
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
