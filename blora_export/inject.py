"""The one way in and the one way out: `prepare` turns a Hugging Face encoder into a B-LoRA model (fingerprint
and MAC profile of the base first, then `inject`), `strip` gives back the original architecture."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .base_model import fingerprint, max_positions
from .bops import MacProfile, profile_macs
from .config import DEFAULT_SEQ_LEN, BLoRAConfig, ConfigError, replace
from .lora import GatedLoRALinear, QuantizedEmbedding
from .targets import TargetError, embedding_tables, encoder_linears, head_modules, resolve_targets


@dataclass
class Injection:
    adapted: list[str]  # Linears with a rank-gated adapter
    quantized: list[str]  # every wrapped encoder Linear (adapted ones included), in module order
    embeddings: list[str]
    head: list[str]


@dataclass
class Prepared:
    model: nn.Module  # injected in place
    config: BLoRAConfig  # with seq_len resolved
    injection: Injection
    profile: MacProfile  # MACs of the base model at config.seq_len, counted before injecting
    fingerprint: str  # of the base model's frozen tensors (head excluded), taken before injecting


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject(model: nn.Module, cfg: BLoRAConfig, adapted: list[str] | None = None,
           fit_tables: bool = True) -> Injection:
    """Wrap targets with adapters, quantize every other encoder Linear and the embedding tables,
    and freeze everything but adapters, gates, ranges and the head.

    `adapted` passes names saved in a checkpoint, so a reload never re-resolves targets; `fit_tables=False`
    skips fitting the tables' ranges, which a checkpoint load restores.
    """
    cfg.validate()
    adapted = list(adapted) if adapted is not None else resolve_targets(model, cfg.targets)
    quantized = encoder_linears(model)
    missing = sorted(set(adapted) - set(quantized))
    if missing:
        raise TargetError(f"adapted modules not found among the encoder's Linears: {missing}")
    embeddings = embedding_tables(model)
    head = head_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in quantized:
        set_module(model, name, GatedLoRALinear(model.get_submodule(name), cfg, adapted=name in adapted))
    for name in embeddings:
        set_module(model, name, QuantizedEmbedding(model.get_submodule(name), cfg.embedding_width, fit_tables))
    for name in head:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return Injection(adapted=adapted, quantized=quantized, embeddings=embeddings, head=head)


def wrapped_linears(model: nn.Module) -> dict[str, GatedLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}


def wrapped_embeddings(model: nn.Module) -> dict[str, QuantizedEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)}


def bops_seq_len(model: nn.Module, cfg: BLoRAConfig) -> int:
    """T of the MAC profile: cfg.seq_len, or DEFAULT_SEQ_LEN shortened to the model's position limit."""
    limit = max_positions(model)
    if cfg.seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    if limit and cfg.seq_len > limit:
        raise ConfigError(f"--bops-seq-len {cfg.seq_len} exceeds the model's {limit} positions")
    return cfg.seq_len


def prepare(model: nn.Module, cfg: BLoRAConfig) -> Prepared:
    """Fingerprint and MAC-profile the base model, then inject: a checkpoint records the base as it was loaded,
    and the MAC profile counts the plain Linears, so both must come before any wrapper exists."""
    cfg = replace(cfg, seq_len=bops_seq_len(model, cfg))
    head = head_modules(model)
    base_fingerprint = fingerprint(model, tuple(head))
    adapted = resolve_targets(model, cfg.targets)
    profile = profile_macs(model, cfg.seq_len, encoder_linears(model), adapted)
    injection = inject(model, cfg, adapted)
    return Prepared(model, cfg, injection, profile, base_fingerprint)


def replace_wrappers(model: nn.Module, make: Callable[[str, nn.Module], nn.Module]) -> nn.Module:
    """In place: every wrapper (GatedLoRALinear, QuantizedEmbedding) becomes make(name, wrapper)."""
    for name in list(wrapped_linears(model)) + list(wrapped_embeddings(model)):
        set_module(model, name, make(name, model.get_submodule(name)))
    return model


def strip(model: nn.Module) -> nn.Module:
    """A copy of an injected model with every wrapper replaced by the module it wraps (original names)."""
    return replace_wrappers(copy.deepcopy(model), lambda _name, wrapper: wrapper.base)
