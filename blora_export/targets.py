"""Which modules of a Hugging Face encoder are quantized, adapted, kept as the head: found from its structure.

- The base model is `model.base_model` (transformers' own pointer: model.bert, model.roberta, model.model, ...).
- The head is every top-level child of the model other than the base model that holds parameters (classifier,
  pre_classifier, a top-level pooler, ModernBERT's head), and the base model's own `pooler`: trained, kept fp32.
- Quantized: every nn.Linear of the base model outside its pooler - attention and feed-forward projections
  whatever they are called, fused QKV projections, projections of embeddings to another hidden size. A Linear
  shared across depth (ALBERT) is one module called N times: the MAC profile counts every call.
- Embedding tables: the nn.Embedding modules under the base model's `embeddings` (looked up by id).
- "qkv": the Linears named like attention query/key/value projections in any of the families' conventions
  (QKV_NAMES), fused ones included. `OVERRIDES` names exceptions per model_type.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UserError

# Last name component of a query / key / value projection (fused ones included) across encoder families:
# BERT/RoBERTa/ELECTRA/ALBERT, DistilBERT, DeBERTa-v2, MPNet, ModernBERT (Wqkv), DeBERTa v1 (in_proj), others.
QKV_NAMES = frozenset({"query", "key", "value", "q_lin", "k_lin", "v_lin", "query_proj", "key_proj", "value_proj",
                       "q", "k", "v", "q_proj", "k_proj", "v_proj", "Wqkv", "qkv", "qkv_proj", "in_proj"})


@dataclass(frozen=True)
class Override:
    """A model type whose structure the general rules read wrongly: its own Q/K/V names or head."""

    qkv: tuple[str, ...] = ()  # last name components of its Q, K, V projections
    head: tuple[str, ...] = ()  # module names of its head, replacing the structural ones


OVERRIDES: dict[str, Override] = {}


class TargetError(UserError, ValueError):
    """Targets that match nothing, or a model whose encoder layers cannot be found."""


def _override(model: nn.Module) -> Override:
    return OVERRIDES.get(getattr(getattr(model, "config", None), "model_type", None), Override())


def base_prefix(model: nn.Module) -> str:
    """The name of the base model inside `model` ("" when the model is the base model itself)."""
    base = getattr(model, "base_model", model)
    if base is model:
        return ""
    for name, module in model.named_children():
        if module is base:
            return name
    raise TargetError(f"{type(model).__name__}: its base model is not one of its direct children; this "
                      "architecture is not supported")


def _pooler(model: nn.Module) -> str | None:
    prefix = base_prefix(model)
    name = f"{prefix}.pooler" if prefix else "pooler"
    modules = dict(model.named_modules())
    return name if name in modules and any(p.numel() for p in modules[name].parameters()) else None


def head_modules(model: nn.Module) -> list[str]:
    """The task head: trained and kept fp32."""
    override = _override(model)
    if override.head:
        names = dict(model.named_modules())
        return [h for h in override.head if h in names]
    prefix = base_prefix(model)
    head = [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    pooler = _pooler(model)
    return ([pooler] if pooler and pooler not in head else []) + head


def encoder_linears(model: nn.Module) -> list[str]:
    """Names of every nn.Linear of the base model outside the head (pooler), in module order."""
    prefix = base_prefix(model)
    head = head_modules(model)
    inside = (lambda n: n.startswith(prefix + ".")) if prefix else (lambda n: True)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and inside(n)
             and not any(n == h or n.startswith(h + ".") for h in head)]
    if not names:
        raise TargetError(f"{type(model).__name__} has no Linear layers in its encoder to quantize; this "
                          "architecture is not supported")
    return names


def embedding_tables(model: nn.Module) -> list[str]:
    """Names of the input embedding tables (word, position, token type): nn.Embedding under `.embeddings.`."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and ".embeddings." in f".{n}"]


def resolve_targets(model: nn.Module, targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """Module names to adapt: 'qkv', 'all-linear', or explicit names (exact or dotted suffixes)."""
    linears = encoder_linears(model)
    if targets == "all-linear":
        chosen = linears
    elif targets == "qkv":
        names = set(_override(model).qkv) or QKV_NAMES
        chosen = [n for n in linears if n.rsplit(".", 1)[-1] in names]
        if not chosen:
            raise TargetError(f"no query/key/value projections found among the encoder's Linears (e.g. "
                              f"{linears[:3]}); pass --lora-targets all-linear or their names")
    else:
        explicit = (targets,) if isinstance(targets, str) else tuple(targets)
        chosen = [n for n in linears if any(n == s or n.endswith("." + s) for s in explicit)]
    if not chosen:
        raise TargetError(f"LoRA targets {targets!r} match no Linear in the encoder; "
                          f"examples of valid names: {linears[:3]}")
    return chosen
