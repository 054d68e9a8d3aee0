"""What trains, at which learning rate: AdamW parameter groups, and freezing the gates for phase 2."""

from __future__ import annotations

import torch
from torch import nn

from blora_export import gates, roles

from .options import OptimSpec

# Phase-2 gate value: |log_alpha| = 30 puts the hard-concrete sample at exactly 0 or 1 for every u the sampler
# can draw (u is clamped to [1e-6, 1 - 1e-6], |logit(u)| <= 13.9), so training sees the deterministic gates.
FROZEN_LOG_ALPHA = 30.0


def param_groups(model: nn.Module, cfg: OptimSpec, head: list[str]) -> list[dict]:
    """Adapters and head at --lr with weight decay; gates at --gate-lr and ranges at --range-lr without."""
    group_of = {roles.ADAPTER: "weights", roles.HEAD: "weights", roles.GATE: "gates", roles.RANGE: "ranges"}
    groups = {"weights": [], "gates": [], "ranges": []}
    for _, role, p in roles.trainable(model, head):
        groups[group_of[role]].append(p)
    settings = {"weights": (cfg.lr, cfg.weight_decay), "gates": (cfg.gate_lr, 0.0), "ranges": (cfg.range_lr, 0.0)}
    return [{"params": params, "name": key, "lr": settings[key][0], "base_lr": settings[key][0],
             "weight_decay": settings[key][1]} for key, params in groups.items() if params]


def build_optimizer(model: nn.Module, cfg: OptimSpec, head: list[str]) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg, head), betas=(0.9, 0.999), eps=1e-8)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


@torch.no_grad()
def freeze_gates(model: nn.Module) -> int:
    """Fix every learned gate at its test-time value (phase 2, docs/METHOD.md section 5); returns how many tensors.

    Idempotent, so a resumed phase 2 can call it again.
    """
    count = 0
    for la in roles.gates(model):
        if la.requires_grad:
            la.copy_(torch.where(gates.is_open(la), FROZEN_LOG_ALPHA, -FROZEN_LOG_ALPHA))
            la.requires_grad_(False)
            la.grad = None
            count += 1
    return count
