"""Registry of default targets per transformers model_type, and the resolver of module names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class ModelFamily:
    encoder_pattern: str  # regex matching the names of the encoder's transformer-layer modules
    qkv: tuple[str, ...]  # name suffixes of the Q, K, V projections
    head: tuple[str, ...]  # name prefixes of the task head (trained, kept fp32)


_BERT_LIKE = ModelFamily(r"(^|\.)encoder\.layer\.\d+\.", ("attention.self.query", "attention.self.key",
                                                          "attention.self.value"), ("bert.pooler", "classifier"))
REGISTRY: dict[str, ModelFamily] = {
    "bert": _BERT_LIKE,
    "roberta": ModelFamily(_BERT_LIKE.encoder_pattern, _BERT_LIKE.qkv, ("classifier",)),
    "deberta-v2": ModelFamily(_BERT_LIKE.encoder_pattern, ("attention.self.query_proj", "attention.self.key_proj",
                                                           "attention.self.value_proj"), ("pooler", "classifier")),
    "distilbert": ModelFamily(r"(^|\.)transformer\.layer\.\d+\.",
                              ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                              ("pre_classifier", "classifier")),
}


class TargetError(UserError, ValueError):
    """Targets that match nothing, or a model type the registry does not know."""


def family_of(model: nn.Module) -> ModelFamily:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in REGISTRY:
        raise TargetError(f"model type {model_type!r} is not supported; supported: {sorted(REGISTRY)}")
    return REGISTRY[model_type]


def encoder_linears(model: nn.Module) -> list[str]:
    """Names of every nn.Linear inside the encoder's transformer layers, in module order."""
    pattern = re.compile(family_of(model).encoder_pattern)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]


def embedding_tables(model: nn.Module) -> list[str]:
    """Names of the input embedding tables (word, position, token type) under `.embeddings.`."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and ".embeddings." in f".{n}"]


def head_modules(model: nn.Module) -> list[str]:
    names = dict(model.named_modules())
    return [p for p in family_of(model).head if p in names]


def resolve_targets(model: nn.Module, targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """Module names to adapt: 'qkv', 'all-linear', or explicit names (exact or dotted suffixes)."""
    linears = encoder_linears(model)
    if targets == "all-linear":
        chosen = linears
    else:
        explicit = (targets,) if isinstance(targets, str) else tuple(targets)
        suffixes = family_of(model).qkv if targets == "qkv" else explicit
        chosen = [n for n in linears if any(n == s or n.endswith("." + s) for s in suffixes)]
    if not chosen:
        raise TargetError(f"LoRA targets {targets!r} match no Linear in the encoder; "
                          f"examples of valid names: {linears[:3]}")
    return chosen
