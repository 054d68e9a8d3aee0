"""TrainConfig: every option of `blora-export train`, composed of the method (BLoRAConfig), the data (DataSpec)
and the optimisation (OptimSpec), with validation and a JSON round trip.

Each default is stated once, in its dataclass; the command line's help reads it from there. The command line
and --config FILE speak in flat option names (`--lr`, `--data-dir`, `--w-bits`); `TrainConfig.from_flags` is
the one place that routes them into the nested config. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blora_export.config import BLoRAConfig, check_number
from blora_export.data import CLASSIFICATION, DataSpec

from .errors import TrainError

DEVICES = ("auto", "cpu", "cuda")
COMPILE = ("auto", "on", "off")  # fused quantizer kernels (blora_export/fused.py); auto: when a C++ compiler is found
GATE_OPTIMIZERS = ("sgd", "adam")
BUDGET_MODES = ("cap", "target")
# Options that may change between an interrupted run and its --resume without changing the result's meaning.
OPERATIONAL = ("resume", "overwrite", "eval_steps", "save_steps", "logging_steps", "device", "config_file",
               "eval_batch_size", "compile")


@dataclass
class OptimSpec:
    """How the trained tensors are optimised, and the phases of a B-LoRA run (train/schedules.py)."""

    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 32  # global, split across processes
    lr: float = 5e-4  # LoRA factors and head
    range_lr: float = 1e-2  # quantizer ranges; relative to the range (see QuantizerSpec.relative_range)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # adapters, head and ranges (gates are not clipped: their gradient is a price)
    warmup_steps: int | None = None  # overrides warmup_ratio
    warmup_ratio: float = 0.06
    calibration_batches: int = 8
    seed: int = 42
    # gates: plain SGD with momentum, so a step follows the size of the gradient and the BOP price acts as a
    # price (with Adam every gate moves about its learning rate per step whatever the penalty: a switch)
    gate_optimizer: str = "sgd"  # "sgd" | "adam"
    gate_lr: float = 10.0
    gate_momentum: float = 0.9
    price_lr: float = 2.0  # dual ascent on the price: += price_lr * (BOP fraction / budget - 1) per step
    budget_mode: str = "cap"  # "cap": the price stays >= 0; "target": it may turn negative (train/price.py)
    gate_warmup_ratio: float = 0.3  # share of the steps before gates learn (the adapters learn first)
    fixed_gate_ratio: float = 0.2  # share of the steps in phase 2 (gates frozen at their test-time values)
    # phase 2's restarted learning rate as a fraction of lr; None (default): one decay over the whole run, which
    # measured +0.5 points on average over a restart at 0.5 in 9 paired runs (3 datasets x 3 seeds, BENCHMARKS.md)
    phase2_lr: float | None = None

    def validate(self) -> OptimSpec:
        for name in ("batch_size", "calibration_batches", "max_steps"):
            _number(name, getattr(self, name), 1, integer=True)
        _number("warmup_steps", self.warmup_steps, 0, integer=True)
        _number("seed", self.seed, 0, integer=True)
        if self.max_steps is None:
            _number("epochs", self.epochs, 0, open_low=True)
        for name in ("lr", "gate_lr", "range_lr", "phase2_lr"):
            _number(name, getattr(self, name), 0, open_low=True)
        for name in ("weight_decay", "max_grad_norm", "price_lr"):
            _number(name, getattr(self, name), 0)
        for name in ("warmup_ratio", "gate_momentum", "gate_warmup_ratio", "fixed_gate_ratio"):
            _number(name, getattr(self, name), 0, 1, open_high=True)
        if self.gate_warmup_ratio + self.fixed_gate_ratio >= 1:
            raise TrainError("--gate-warmup-ratio plus --fixed-gate-ratio must leave steps for the gates to learn "
                             f"(got {self.gate_warmup_ratio} + {self.fixed_gate_ratio})")
        if self.budget_mode not in BUDGET_MODES:
            raise TrainError(f"--budget-mode must be one of {list(BUDGET_MODES)}, got {self.budget_mode!r}")
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise TrainError(f"--gate-optimizer must be one of {list(GATE_OPTIMIZERS)}, got {self.gate_optimizer!r}")
        return self


# Command-line names of BLoRAConfig fields where the two differ (every other method field keeps its name).
METHOD_FLAGS = {"w_bits": "qat_w_bits", "a_bits": "qat_a_bits", "lora_targets": "targets",
                "bops_seq_len": "seq_len"}


@dataclass
class TrainConfig:
    model: str
    output_dir: str
    data: DataSpec
    method: BLoRAConfig = field(default_factory=BLoRAConfig)
    optim: OptimSpec = field(default_factory=OptimSpec)
    trust_remote_code: bool = False
    # bookkeeping
    eval_batch_size: int = 64
    eval_steps: int | None = None  # default: once per epoch
    save_steps: int | None = 500
    logging_steps: int = 10
    device: str = "auto"
    compile: str = "auto"
    resume: bool = False
    overwrite: bool = False
    config_file: str | None = None

    # ---- the flat option names of the command line --------------------------------------------
    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> TrainConfig:
        """Route flat options (`lr`, `data_dir`, `w_bits`, `per_tensor_weights`, ...) into the nested config;
        options left out (or None) keep their dataclass defaults."""
        given = {k: None if v == "none" else v for k, v in flags.items() if v is not None}
        data_fields = {f.name for f in dataclasses.fields(DataSpec)}
        optim_fields = {f.name for f in dataclasses.fields(OptimSpec)}
        method_fields = {f.name for f in dataclasses.fields(BLoRAConfig)}
        data, optim, method, top = {}, {}, {}, {}
        for name, value in given.items():
            target = METHOD_FLAGS.get(name, name)
            if name in data_fields:
                data[name] = value
            elif name in optim_fields:
                optim[name] = value
            elif name == "per_tensor_weights":
                method["per_channel_weights"] = not value
            elif target in method_fields:
                method[target] = _method_value(target, value)
            else:
                top[name] = value
        if "task" not in data:
            raise TrainError("missing required option --task")
        unknown = sorted(set(top) - {f.name for f in dataclasses.fields(cls)} - {"data", "method", "optim"})
        if unknown:
            raise TrainError(f"unknown training options: {unknown}")
        return cls(data=DataSpec(**data), method=BLoRAConfig(**method), optim=OptimSpec(**optim), **top)

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        if self.device not in DEVICES:
            raise TrainError(f"--device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.compile not in COMPILE:
            raise TrainError(f"--compile must be one of {list(COMPILE)}, got {self.compile!r}")
        self._check_data()
        for name in ("eval_batch_size", "logging_steps", "eval_steps", "save_steps"):
            _number(name, getattr(self, name), 1, integer=True)
        self.optim.validate()
        self.method.validate()  # raises ConfigError with the option's name
        return self

    def _check_data(self) -> None:
        d = self.data
        d.validate()
        files = (d.train_file, d.validation_file)
        if any(files) and not all(files):
            raise TrainError("pass both --train-file and --validation-file (or --data-dir with train and dev files)")
        if d.task == CLASSIFICATION and not (d.data_dir or all(files)):
            raise TrainError("--task classification needs data: --train-file and --validation-file, or --data-dir")

    @property
    def state_dir(self) -> Path:
        """Where the run keeps its working state (resume snapshots, the live log): a sibling of the output."""
        out = Path(self.output_dir).resolve()
        return out.with_name(out.name + ".state")

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {**_plain(dataclasses.asdict(self)), "method": self.method.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainError(f"unknown training options: {unknown}")
        kw = dict(d)
        kw["data"] = DataSpec(**kw["data"])
        kw["optim"] = OptimSpec(**kw.get("optim", {}))
        kw["method"] = BLoRAConfig.from_dict(kw.get("method", {}))
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def resume_key(self) -> dict[str, Any]:
        """The options that must match for --resume to continue the same run."""
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}


def _method_value(name: str, value: Any) -> Any:
    """Command-line values in BLoRAConfig's types: width lists as tuples, 'q,k,v' target names as a list."""
    if name in ("weight_bits", "act_bits"):
        return tuple(value)
    if name == "targets" and value not in ("qkv", "all-linear"):
        return [t.strip() for t in str(value).split(",") if t.strip()]
    return value


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _number(name: str, value, low: float, high: float | None = None, **kw) -> None:
    """check_number for the option `--name` (None: not given, its default applies)."""
    if value is not None:
        check_number(f"--{_flag(name)}", value, low, high, error=TrainError, **kw)
