"""The training summary (stored in the checkpoint) and its printed table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blora_export.bops import MacProfile, fraction
from blora_export.gated_model import deterministic_bops, deterministic_widths, expected_bops, ranks


def _plain(value: Any) -> Any:
    """JSON-ready: tensors become floats, containers are walked."""
    if torch.is_tensor(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def summary(model: nn.Module, profile: MacProfile, validation: dict[str, float], extra: dict) -> dict:
    """Validation metrics with deterministic gates, learned ranks and widths, deterministic and expected BOPs."""
    with torch.no_grad():
        expected = expected_bops(model, profile)
    bops = deterministic_bops(model, profile)
    return {
        "metrics": validation,  # validation set, deterministic gates
        "ranks": ranks(model),
        "widths": {n: {"weight": w, "activation": a} for n, (w, a) in deterministic_widths(model).items()},
        "bops": _plain(bops),
        "bop_fraction": float(fraction(bops)),  # what the audit counts, as a fraction of the fp32 model's BOPs
        "expected_bops": _plain(expected),
        "bops_seq_len": profile.seq_len,
        **extra,
    }


def _short(name: str) -> str:
    """Drop the model prefix up to the layer index: 'bert.encoder.layer.3.attention.self.query' -> '3.attention...'."""
    marker = ".layer."
    return name.split(marker, 1)[1] if marker in name else name


def table(s: dict) -> str:
    """A plain-text report: metrics, BOP reductions for both denominators, then rank and widths per layer."""
    bops, expected = s["bops"], s["expected_bops"]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items())
    lines = [
        f"task {s['task']}  method {s['method']}  steps {s['steps']}  "
        f"{s['seconds_per_step']:.3f} s/step  train {s['train_seconds']:.1f} s",
        f"validation (deterministic gates): {metrics}",
        f"BOP reduction vs fp32 at T={s['bops_seq_len']} (deterministic / expected): "
        f"whole model {100 * bops['whole_model']['reduction']:.1f}% / "
        f"{100 * expected['whole_model']['reduction']:.1f}%, adapted projections "
        f"{100 * bops['adapted']['reduction']:.1f}% / {100 * expected['adapted']['reduction']:.1f}%",
        f"whole-model BOPs {bops['whole_model']['bops']:.4g} (uniform W8A8 reference "
        f"{bops['w8a8_reference_bops']:.4g}, fp32 {bops['whole_model']['bops_fp32']:.4g})",
    ]
    price = s.get("price")
    if price:
        budget = "none (a fixed price)" if price["budget"] is None else f"{100 * price['budget']:.1f}% of fp32"
        lines.append(f"BOP budget {budget}: the model uses {100 * s['bop_fraction']:.2f}%; final price "
                     f"{price['final']:.4g}" + (f"; the budget guarantee closed {len(price['closed_by_budget'])} "
                                                "level(s) at the end of phase 1" if price["closed_by_budget"] else ""))
    width = max(len(_short(n)) for n in s["widths"]) if s["widths"] else 10
    lines.append(f"{'layer'.ljust(width)}  rank  w_bits  a_bits")
    for name, w in s["widths"].items():
        rank = s["ranks"].get(name, "-")
        lines.append(f"{_short(name).ljust(width)}  {str(rank).rjust(4)}  {w['weight']:>6}  {w['activation']:>6}")
    return "\n".join(lines)
