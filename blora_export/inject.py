"""Turn a Hugging Face encoder into a B-LoRA model in place, and say which modules were changed."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import BLoRAConfig
from .lora import GatedLoRALinear, QuantizedEmbedding
from .targets import embedding_tables, encoder_linears, head_modules, resolve_targets


@dataclass
class Injection:
    adapted: list[str]  # Linears with a rank-gated adapter
    quantized: list[str]  # every wrapped encoder Linear (adapted ones included), in module order
    embeddings: list[str]
    head: list[str]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject(model: nn.Module, cfg: BLoRAConfig, adapted: list[str] | None = None) -> Injection:
    """Wrap targets with adapters, quantize every other encoder Linear and the embedding tables,
    and freeze everything but adapters, gates, ranges and the head.

    `adapted` passes names saved in a checkpoint, so a reload never re-resolves targets.
    """
    cfg.validate()
    adapted = list(adapted) if adapted is not None else resolve_targets(model, cfg.targets)
    quantized = encoder_linears(model)
    missing = sorted(set(adapted) - set(quantized))
    if missing:
        raise ValueError(f"adapted modules not found among the encoder's Linears: {missing}")
    embeddings = embedding_tables(model)
    head = head_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in quantized:
        _set_module(model, name, GatedLoRALinear(model.get_submodule(name), cfg, adapted=name in adapted))
    for name in embeddings:
        _set_module(model, name, QuantizedEmbedding(model.get_submodule(name), cfg.embedding_width))
    for name in head:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return Injection(adapted=adapted, quantized=quantized, embeddings=embeddings, head=head)


def wrapped_linears(model: nn.Module) -> dict[str, GatedLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}


def wrapped_embeddings(model: nn.Module) -> dict[str, QuantizedEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)}
