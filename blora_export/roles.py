"""What each trained tensor is, as the modules declare it: adapter factor, gate, range, record or head.

The wrapper modules (GatedLoRALinear, BayesianBitsQuantizer) list their tensors by role in a class attribute
`TRAINED`; the functions here walk the model by module type and read those lists. Nothing is decided from
parameter-name substrings, so renaming a tensor moves it nowhere: it is declared where it is defined.
Optimizer groups, the checkpoint's and the resume state's tensors, and phase-2 freezing are all built from
`trained_tensors`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

ADAPTER = "adapter"  # LoRA factors: trained at the task learning rate
GATE = "gate"  # hard-concrete log_alphas (widths and ranks)
RANGE = "range"  # quantizer ranges (beta)
RECORD = "record"  # buffers a trained model needs back (a quantizer's sign and calibration flag)
HEAD = "head"  # the task head (pooler, classifier): trained like the adapters
ROLES = (ADAPTER, GATE, RANGE, RECORD, HEAD)


def _declaring_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    from .lora import GatedLoRALinear
    from .quantizer import BayesianBitsQuantizer

    return ((n, m) for n, m in model.named_modules() if isinstance(m, GatedLoRALinear | BayesianBitsQuantizer))


def trained_tensors(model: nn.Module, head: Iterable[str]) -> dict[str, tuple[str, torch.Tensor]]:
    """name -> (role, tensor) for everything training owns: the modules' declared tensors and the head's."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for name, module in _declaring_modules(model):
        for role, attributes in module.TRAINED.items():
            for attribute in attributes:
                tensor = getattr(module, attribute, None)
                if tensor is not None:
                    out[f"{name}.{attribute}" if name else attribute] = (role, tensor)
    for prefix in head:
        for key, tensor in model.get_submodule(prefix).state_dict(keep_vars=True).items():
            out[f"{prefix}.{key}"] = (HEAD, tensor)
    return out


def trained_keys(model: nn.Module, head: Iterable[str]) -> set[str]:
    return set(trained_tensors(model, head))


def trained_state(model: nn.Module, head: Iterable[str]) -> dict[str, torch.Tensor]:
    """What a checkpoint stores, in state_dict order, on the CPU."""
    keys = trained_keys(model, head)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in keys}


def trainable(model: nn.Module, head: Iterable[str]) -> list[tuple[str, str, nn.Parameter]]:
    """(name, role, parameter) of every parameter that requires a gradient, in named_parameters order.

    An undeclared trainable parameter is a bug: the backbone must stay frozen."""
    roles = {name: role for name, (role, _) in trained_tensors(model, head).items()}
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in roles:
            raise RuntimeError(f"parameter {name} is trainable but declared by no module: the backbone must stay "
                               "frozen")
        out.append((name, roles[name], p))
    return out


def gates(model: nn.Module) -> list[nn.Parameter]:
    """Every gate tensor of the model (trainable or not)."""
    return [t for role, t in trained_tensors(model, ()).values() if role == GATE]
