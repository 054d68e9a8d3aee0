"""Configuration dataclasses with validation and a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .widths import WIDTHS

METHODS = ("blora", "lora", "qat")
ACT_WIDTHS = (4, 8, 16, 32)
EMBEDDING_WIDTHS = (4, 8, 32)
DEFAULT_SEQ_LEN = 128  # T of the MAC profile and BOP counts, unless the model has fewer positions


class ConfigError(UserError, ValueError):
    """A configuration value that makes no sense; the message names the option and the fix."""


def _check_widths(name: str, widths: tuple[int, ...], universe: tuple[int, ...]) -> None:
    if not widths or any(b not in universe for b in widths):
        raise ConfigError(f"{name} must be a non-empty subset of {list(universe)}, got {list(widths)}")
    ordered = sorted(widths)
    if any(b2 != 2 * b1 for b1, b2 in zip(ordered, ordered[1:], strict=False)):
        raise ConfigError(f"{name} must be consecutive doublings (e.g. 4,8,16,32), got {ordered}")


@dataclass
class QuantizerSpec:
    """Which widths one quantizer may take and where it starts."""

    allowed: tuple[int, ...] = WIDTHS
    init_bits: int = 32
    learn: bool = True  # False: the width stays at init_bits (QAT and LoRA baselines)

    def validate(self, name: str, universe: tuple[int, ...] = WIDTHS) -> None:
        _check_widths(f"{name} allowed widths", self.allowed, universe)
        if self.init_bits not in self.allowed:
            raise ConfigError(f"{name} initial width {self.init_bits} is not in the allowed {list(self.allowed)}")


@dataclass
class BLoRAConfig:
    """Everything `inject` needs to turn a Hugging Face encoder into a B-LoRA model."""

    method: str = "blora"
    max_rank: int = 8
    lora_alpha: float = 16.0
    targets: Any = "qkv"  # "qkv", "all-linear" or an explicit list of module names
    weight_bits: tuple[int, ...] = WIDTHS
    act_bits: tuple[int, ...] = ACT_WIDTHS
    init_weight_bits: int = 8
    init_act_bits: int = 8
    qat_w_bits: int = 8
    qat_a_bits: int = 8
    per_channel_weights: bool = True
    embedding_bits: int = 8
    # mu and lambda_r are relative to a per-example mean task loss, whose gradients on gates are ~1e-5..1e-3
    # (measured on all-MiniLM-L6-v2 / SST-2). At mu = 0.05 the penalty outweighs them ~1000x and a 150-step run
    # collapses every layer to W2A4 and rank 1 (accuracy 0.66 vs 0.78); at 2e-3 the task defends the layers it
    # needs (value and attention-output projections) while query/key/FFN weights go to 4 bits.
    bops_weight: float = 2e-3  # mu
    rank_weight: float = 1e-3  # lambda_r
    gate_init: float = 3.0  # initial log_alpha of gates that start open
    seq_len: int | None = None  # T at which MACs and BOPs are counted; None: DEFAULT_SEQ_LEN or the model's limit

    def validate(self) -> BLoRAConfig:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.max_rank < 1:
            raise ConfigError(f"max rank must be >= 1, got {self.max_rank}")
        if not self.lora_alpha > 0:
            raise ConfigError(f"lora alpha must be > 0, got {self.lora_alpha}")
        if not (0 <= self.bops_weight < float("inf") and 0 <= self.rank_weight < float("inf")):
            raise ConfigError(f"bops weight and rank weight must be finite and >= 0, got {self.bops_weight} and "
                              f"{self.rank_weight}")
        if not abs(self.gate_init) < float("inf"):
            raise ConfigError(f"gate init must be a finite number, got {self.gate_init}")
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"bops seq len must be >= 1, got {self.seq_len}")
        if self.embedding_bits not in EMBEDDING_WIDTHS:
            raise ConfigError(f"embedding bits must be one of {list(EMBEDDING_WIDTHS)}, got {self.embedding_bits}")
        if not (isinstance(self.targets, str) or isinstance(self.targets, list | tuple)):
            raise ConfigError("targets must be 'qkv', 'all-linear' or a list of module names")
        self.weight_spec().validate("weight")
        self.act_spec().validate("activation", ACT_WIDTHS)
        return self

    def weight_spec(self) -> QuantizerSpec:
        if self.method == "lora":
            return QuantizerSpec(allowed=(32,), init_bits=32, learn=False)
        if self.method == "qat":
            return QuantizerSpec(allowed=(self.qat_w_bits,), init_bits=self.qat_w_bits, learn=False)
        return QuantizerSpec(allowed=tuple(self.weight_bits), init_bits=self.init_weight_bits)

    def act_spec(self) -> QuantizerSpec:
        if self.method == "lora":
            return QuantizerSpec(allowed=(32,), init_bits=32, learn=False)
        if self.method == "qat":
            return QuantizerSpec(allowed=(self.qat_a_bits,), init_bits=self.qat_a_bits, learn=False)
        return QuantizerSpec(allowed=tuple(self.act_bits), init_bits=self.init_act_bits)

    @property
    def learn_rank(self) -> bool:
        return self.method == "blora"

    @property
    def embedding_width(self) -> int:
        return 32 if self.method == "lora" else self.embedding_bits

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BLoRAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown B-LoRA config keys: {sorted(unknown)}")
        kw = dict(d)
        for key in ("weight_bits", "act_bits"):
            if key in kw:
                kw[key] = tuple(int(b) for b in kw[key])
        return cls(**kw).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BLoRAConfig:
        return cls.from_dict(json.loads(text))


def replace(cfg: BLoRAConfig, **changes: Any) -> BLoRAConfig:
    return dataclasses.replace(cfg, **changes).validate()


__all__ = ["BLoRAConfig", "ConfigError", "QuantizerSpec", "replace"]
