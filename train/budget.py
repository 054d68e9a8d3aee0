"""The budget guarantee: when phase 1 ends above the BOP budget (a short run, a price still rising), close the
levels that cost least accuracy per BOP until the model fits.

A candidate is the top open level of a quantizer (closing it halves that quantizer's width) or, for an adapter
deployed unmerged, its highest open rank gate. On a few fixed training batches in eval mode (the exported
model), the task loss with each candidate closed is measured, and the one with the least loss increase per BOP
saved closes. The deterministic BOPs then equal what the audit counts, so the export is within budget.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from blora_export import gates
from blora_export.bops import MacProfile
from blora_export.gated_model import deterministic_bop_fraction
from blora_export.inject import wrapped_linears

CLOSED = gates.HARD_OFF - 1.0  # a closed level's log_alpha: below the hard-off line


def _candidates(model: nn.Module) -> list[tuple[str, str, torch.Tensor, int]]:
    """(layer, what, log_alpha tensor, index) of every level that can close next."""
    out = []
    for name, m in wrapped_linears(model).items():
        for what, q in (("weight", m.weight_quantizer), ("input", m.input_quantizer)):
            n = gates.nested_open_count(q.log_alpha.detach())
            if q.learn and n:
                out.append((name, what, q.log_alpha, n - 1))
        if m.max_rank and m.learn_rank:
            n = gates.nested_open_count(m.rank_log_alpha.detach())
            if n:
                out.append((name, "rank", m.rank_log_alpha, n - 1))
    return out


@torch.no_grad()
def enforce_budget(model: nn.Module, profile: MacProfile, budget: float,
                   loss: Callable[[nn.Module], float]) -> list[dict]:
    """Close levels until the deterministic BOP fraction is <= budget; returns what was closed, in order.
    `loss(model)` is the task loss of the model as it is (eval mode, fixed batches).

    Lazy greedy: a candidate's loss increase is measured once and kept until its own layer changes (closures in
    other layers barely move it), so a run costs about one loss per candidate, not one per candidate per round;
    the BOPs it saves are recounted every round (they depend on the layer's other width)."""
    closed = []
    fraction = deterministic_bop_fraction(model, profile)
    base = loss(model) if fraction > budget else 0.0
    measured: dict[tuple[str, str, int], float] = {}
    while fraction > budget:
        best = None
        for layer, what, la, k in _candidates(model):
            kept = float(la[k])
            la[k] = CLOSED
            saved = fraction - deterministic_bop_fraction(model, profile)
            if (layer, what, k) not in measured:
                measured[(layer, what, k)] = loss(model) - base
            la[k] = kept
            cost = measured[(layer, what, k)]
            if saved > 0 and (best is None or cost / saved < best[0]):
                best = (cost / saved, layer, what, la, k, saved, cost)
        if best is None:
            break  # nothing left to close: the budget is below what the allowed widths can reach
        _, layer, what, la, k, saved, cost = best
        la[k] = CLOSED
        fraction = deterministic_bop_fraction(model, profile)
        base = loss(model) if fraction > budget else base
        measured = {key: value for key, value in measured.items() if key[0] != layer}
        closed.append({"layer": layer, "gate": what, "level": k, "bops_saved": saved, "loss_increase": cost,
                       "fraction": fraction})
    return closed


@torch.no_grad()
def least_fraction(model: nn.Module, profile: MacProfile) -> float:
    """The smallest BOP fraction the learned gates can reach (every learned width and rank at its minimum)."""
    saved = []
    for _, _, la, _ in _candidates(model):
        saved.append((la, la.clone()))
        la.fill_(CLOSED)
    try:
        return deterministic_bop_fraction(model, profile)
    finally:
        for la, value in saved:
            la.copy_(value)
