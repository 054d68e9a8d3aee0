"""Configuration dataclasses with validation and a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .widths import WIDTHS

METHODS = ("blora", "lora", "qat")
DEPLOY_TARGETS = ("merged", "adapter")
CALIBRATIONS = ("mse", "maxabs")
ACT_WIDTHS = (4, 8, 16, 32)
# The widths B-LoRA may choose by default: from W4A8, the least a 300-step run kept at fp32 LoRA's accuracy
# (2-bit weights and 4-bit activations cost points there; BENCHMARKS.md). Budgets below what W4A8 reaches
# need the narrower widths allowed explicitly.
DEFAULT_WEIGHT_BITS = (4, 8, 16, 32)
DEFAULT_ACT_BITS = (8, 16, 32)
EMBEDDING_WIDTHS = (4, 8, 32)
DEFAULT_SEQ_LEN = 128  # T of the MAC profile and BOP counts, unless the model has fewer positions


class ConfigError(UserError, ValueError):
    """A configuration value that makes no sense; the message names the option and the fix."""


INT_LIMIT = 2**63  # integer options must fit the 64-bit integers of torch and numpy
MAX_RANK = 65536  # beyond any encoder's width; a larger rank only fails allocating (train checks the model's own)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *, open_low: bool = False,
                 open_high: bool = False, integer: bool = False, error: type[Exception] = ConfigError) -> None:
    """The one range check of numeric options: a real number (an integer if `integer`; never a bool), finite
    (inf or nan would train NaN weights), within low..high (an open end excluded); raises `error` naming `name`."""
    if integer and high is None:
        high, open_high = INT_LIMIT, True
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    if ok:
        x = math.inf if isinstance(value, int) and abs(value) >= INT_LIMIT else float(value)
        ok = (math.isfinite(x) and (low is None or (x > low if open_low else x >= low))
              and (high is None or (x < high if open_high else x <= high)))
    if ok:
        return
    if integer:  # name only the end the value is beyond (the 64-bit limit means nothing to a 0)
        beyond_high = type(value) is int and low is not None and value >= low
        low, high = (None, high) if beyond_high else (low, None)
    ends = ["2^63" if v == INT_LIMIT else f"{v:g}" for v in (low, high) if v is not None]
    if low is not None and high is not None:
        where = f" in {'(' if open_low else '['}{ends[0]}, {ends[1]}{')' if open_high else ']'}"
    elif low is not None:
        where = f" {'>' if open_low else '>='} {ends[0]}"
    elif high is not None:
        where = f" {'<' if open_high else '<='} {ends[0]}"
    else:
        where = ""
    shown = str(value) if len(str(value)) <= 24 else str(value)[:20] + "..."
    raise error(f"{name} must be{'' if integer else ' a finite number'}{where}, got {shown}")


def _check_widths(name: str, widths: tuple[int, ...], universe: tuple[int, ...]) -> None:
    if not widths or any(b not in universe for b in widths):
        raise ConfigError(f"{name} must be a non-empty subset of {list(universe)}, got {list(widths)}")
    ordered = sorted(widths)
    if any(b2 != 2 * b1 for b1, b2 in zip(ordered, ordered[1:], strict=False)):
        raise ConfigError(f"{name} must be consecutive doublings (e.g. 4,8,16,32), got {ordered}")


@dataclass
class QuantizerSpec:
    """Which widths one quantizer may take, where it starts, and how its range and gates train."""

    allowed: tuple[int, ...] = WIDTHS
    init_bits: int = 32
    learn: bool = True  # False: the width stays at init_bits (QAT and LoRA baselines)
    relative_range: bool = True  # range ends learned relative to their initial scale (log-parameterised)
    calibration: str = "mse"  # activation range init: least quantization error ("mse") or "maxabs"
    affine: bool = True  # activations: affine unsigned grid with a zero point (else symmetric signed / [0, hi])
    sampled: bool = False  # hard-concrete samples in training instead of deterministic straight-through gates
    hard_off: bool = True  # a gate at or below gates.HARD_OFF is exactly 0 and the levels above are skipped

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
    weight_bits: tuple[int, ...] = DEFAULT_WEIGHT_BITS
    act_bits: tuple[int, ...] = DEFAULT_ACT_BITS
    init_weight_bits: int = 8
    init_act_bits: int = 8
    qat_w_bits: int = 8
    qat_a_bits: int = 8
    per_channel_weights: bool = True
    embedding_bits: int = 8
    # The prior is a price on BOPs: price x E[BOPs] / BOPs of the fp32 model (attention included), i.e. loss per
    # 100% of fp32 BOPs. With a budget (the default way to run B-LoRA) the price adapts until the model fits:
    # bops_weight is then only its starting value; without one (bops_budget None) it is the fixed price.
    bops_budget: float | None = 0.10  # fraction of fp32 whole-model BOPs the exported model may use
    bops_weight: float = 0.0  # the price (mu), loss per 100% of fp32 whole-model BOPs
    deploy: str = "merged"  # "merged": rank is capacity, not cost; "adapter": the unmerged branch is charged
    gate_init: float = 1.0  # initial log_alpha of gates that start open: open, but a price can move them soon
    seq_len: int | None = None  # T at which MACs and BOPs are counted; None: DEFAULT_SEQ_LEN or the model's limit
    # recipe switches (each on by default; off reproduces the first implementation's choice, for ablations)
    gate_sampling: bool = False  # sample hard-concrete gates in training instead of straight-through test gates
    hard_off: bool = True
    affine_activations: bool = True
    relative_ranges: bool = True
    calibration: str = "mse"
    # blora: share of the token rows whose sampled estimate is the gradient of a frozen weight (its quantizer's
    # range and gates learn from it; blora_export/sampled_linear.py); 1: the exact gradient
    frozen_weight_grad_rows: float = 0.25

    def validate(self) -> BLoRAConfig:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_number("max rank", self.max_rank, 1, MAX_RANK, integer=True)
        check_number("lora alpha", self.lora_alpha, 0, open_low=True)
        check_number("bops weight", self.bops_weight, 0)
        if self.bops_budget is not None:  # a fraction of the fp32 model's BOPs
            check_number("bops budget", self.bops_budget, 0, 1, open_low=True)
        if self.deploy not in DEPLOY_TARGETS:
            raise ConfigError(f"deploy must be one of {list(DEPLOY_TARGETS)}, got {self.deploy!r}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {list(CALIBRATIONS)}, got {self.calibration!r}")
        check_number("gate init", self.gate_init)
        check_number("frozen weight grad rows", self.frozen_weight_grad_rows, 0, 1, open_low=True)
        if self.seq_len is not None:
            check_number("bops seq len", self.seq_len, 1, integer=True)
        if self.embedding_bits not in EMBEDDING_WIDTHS:
            raise ConfigError(f"embedding bits must be one of {list(EMBEDDING_WIDTHS)}, got {self.embedding_bits}")
        if not (isinstance(self.targets, str) or isinstance(self.targets, list | tuple)):
            raise ConfigError("targets must be 'qkv', 'all-linear' or a list of module names")
        self.weight_spec().validate("weight")
        self.act_spec().validate("activation", ACT_WIDTHS)
        return self

    def _spec(self, allowed: tuple[int, ...], init_bits: int, learn: bool) -> QuantizerSpec:
        return QuantizerSpec(allowed=tuple(allowed), init_bits=init_bits, learn=learn,
                             relative_range=self.relative_ranges, calibration=self.calibration,
                             affine=self.affine_activations, sampled=self.gate_sampling, hard_off=self.hard_off)

    def weight_spec(self) -> QuantizerSpec:
        if self.method == "lora":
            return self._spec((32,), 32, False)
        if self.method == "qat":
            return self._spec((self.qat_w_bits,), self.qat_w_bits, False)
        return self._spec(self.weight_bits, self.init_weight_bits, True)

    def act_spec(self) -> QuantizerSpec:
        if self.method == "lora":
            return self._spec((32,), 32, False)
        if self.method == "qat":
            return self._spec((self.qat_a_bits,), self.qat_a_bits, False)
        return self._spec(self.act_bits, self.init_act_bits, True)

    @property
    def learn_rank(self) -> bool:
        """Rank is learned (and charged) only for an adapter that ships unmerged; merged, it costs nothing."""
        return self.method == "blora" and self.deploy == "adapter"

    @property
    def frozen_weight_grad_fraction(self) -> float:
        """The sampled share for B-LoRA; the baselines (QAT's ranges) keep the exact gradient."""
        return self.frozen_weight_grad_rows if self.method == "blora" else 1.0

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
