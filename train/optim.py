"""What trains, how: AdamW for adapters, head and ranges; the gates' own optimizer; freezing gates for phase 2.

Gates train with SGD and momentum by default: a step follows the size of the gradient, so the BOP price acts
as a price (a gate closes when its price outweighs what the task loses) instead of a switch (Adam moves every
gate about its learning rate per step whatever the penalty's size). Gates keep a constant learning rate and are
not gradient-clipped with the rest: their gradient is the price signal.
"""

from __future__ import annotations

import torch
from torch import nn

from blora_export import gates, roles

from .options import OptimSpec

# Phase-2 gate value: |log_alpha| = 30 puts P(z > 0) at 0 or 1 to float precision (and every hard-concrete
# sample the sampler can draw at exactly 0 or 1), so training sees the deterministic gates and expected BOPs
# equal the deterministic ones.
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


class Optimizers:
    """The run's two optimizers behind one interface (step, zero_grad, learning-rate factor, state)."""

    def __init__(self, model: nn.Module, cfg: OptimSpec, head: list[str]):
        groups = param_groups(model, cfg, head)
        main = [g for g in groups if g["name"] != "gates"]
        self.gate_params = [p for g in groups if g["name"] == "gates" for p in g["params"]]
        self.main = torch.optim.AdamW(main, betas=(0.9, 0.999), eps=1e-8)
        self.gates = None
        if self.gate_params:
            if cfg.gate_optimizer == "sgd":
                self.gates = torch.optim.SGD(self.gate_params, lr=cfg.gate_lr, momentum=cfg.gate_momentum)
            else:
                self.gates = torch.optim.Adam(self.gate_params, lr=cfg.gate_lr, betas=(0.9, 0.999), eps=1e-8)
        self.max_grad_norm = cfg.max_grad_norm

    @property
    def clipped_params(self) -> list[nn.Parameter]:
        return [p for g in self.main.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        self.main.zero_grad(set_to_none=True)
        if self.gates is not None:
            self.gates.zero_grad(set_to_none=True)

    def step(self, gates_learn: bool) -> None:
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped_params, self.max_grad_norm)
        self.main.step()
        if gates_learn and self.gates is not None:
            self.gates.step()

    def set_lr(self, factor: float) -> None:
        """Scale the scheduled groups (adapters, head, ranges); the gates keep their rate."""
        for group in self.main.param_groups:
            group["lr"] = group["base_lr"] * factor

    @property
    def lr(self) -> float:
        return self.main.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"main": self.main.state_dict(), **({"gates": self.gates.state_dict()} if self.gates else {})}

    def load_state_dict(self, state: dict) -> None:
        self.main.load_state_dict(state["main"])
        if self.gates is not None:
            self.gates.load_state_dict(state["gates"])


def set_gates_learning(optimizers: Optimizers, learning: bool) -> None:
    """Gates take gradients only while they learn (the warm-up and phase 2 skip that backward work)."""
    for p in optimizers.gate_params:
        p.requires_grad_(learning)


@torch.no_grad()
def freeze_gates(gate_params: list[nn.Parameter]) -> int:
    """Fix the learned gates at their test-time values (phase 2, docs/METHOD.md); returns how many tensors
    changed. Idempotent, so a resumed phase 2 can call it again."""
    count = 0
    for la in gate_params:
        if la.requires_grad or not bool((la.abs() == FROZEN_LOG_ALPHA).all()):
            la.copy_(torch.where(gates.is_open(la), FROZEN_LOG_ALPHA, -FROZEN_LOG_ALPHA))
            la.requires_grad_(False)
            la.grad = None
            count += 1
    return count
