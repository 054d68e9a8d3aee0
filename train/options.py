"""TrainConfig: every option of `blora-export train`, with validation and a JSON round trip.

Importing this module is cheap (no torch): the CLI builds a TrainConfig before anything heavy loads.
B-LoRA knobs left at None take BLoRAConfig's defaults, so there is one source of truth for them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TrainError
from .tasks import CLASSIFICATION, TASK_NAMES

DEVICES = ("auto", "cpu", "cuda")
# Options that may change between an interrupted run and its --resume without changing the result's meaning.
OPERATIONAL = ("resume", "overwrite", "eval_steps", "save_steps", "logging_steps", "device", "config_file",
               "eval_batch_size")


@dataclass
class TrainConfig:
    model: str
    task: str
    output_dir: str
    trust_remote_code: bool = False
    # data
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    # method (None: BLoRAConfig's default)
    method: str = "blora"
    w_bits: int = 8
    a_bits: int = 8
    max_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str = "qkv"
    bops_weight: float | None = None
    rank_weight: float | None = None
    weight_bits: tuple[int, ...] | None = None
    act_bits: tuple[int, ...] | None = None
    init_weight_bits: int | None = None
    init_act_bits: int | None = None
    embedding_bits: int | None = None
    gate_init: float | None = None
    per_tensor_weights: bool = False
    bops_seq_len: int | None = None
    # optimisation
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-4
    # Adam moves a gate by about gate_lr per step whatever the penalty's size; from log_alpha = +3 to the closing
    # threshold (-0.935) takes ~80 steps at 5e-2 but ~400 at METHOD's 1e-2, i.e. never in a short CPU run.
    gate_lr: float = 5e-2
    range_lr: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.06
    regularizer_warmup_steps: int = 0
    fixed_gate_steps: int = 0
    calibration_batches: int = 8
    seed: int = 42
    # bookkeeping
    eval_steps: int | None = None
    save_steps: int | None = 500
    logging_steps: int = 10
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    config_file: str | None = None

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        if self.task not in TASK_NAMES:
            raise TrainError(f"unknown task {self.task!r}; choose one of {list(TASK_NAMES)}")
        if self.device not in DEVICES:
            raise TrainError(f"--device must be one of {list(DEVICES)}, got {self.device!r}")
        self._check_data()
        positive = {"batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "logging_steps": self.logging_steps, "calibration_batches": self.calibration_batches}
        optional_positive = {"max_steps": self.max_steps, "eval_steps": self.eval_steps,
                             "save_steps": self.save_steps, "max_train_samples": self.max_train_samples,
                             "max_eval_samples": self.max_eval_samples}
        for name, value in {**positive, **optional_positive}.items():
            if value is not None and value < 1:
                raise TrainError(f"--{_flag(name)} must be >= 1, got {value}")
        if not 0 <= self.seed < 2**63:
            raise TrainError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.max_seq_length < 2:
            raise TrainError(f"--max-seq-length must be >= 2 (room for the special tokens), got {self.max_seq_length}")
        if self.max_steps is None and not self.epochs > 0:
            raise TrainError(f"--epochs must be > 0, got {self.epochs}")
        for name in ("lr", "gate_lr", "range_lr"):
            if not getattr(self, name) > 0:
                raise TrainError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "regularizer_warmup_steps", "fixed_gate_steps"):
            if not getattr(self, name) >= 0:
                raise TrainError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.fixed_gate_steps and self.method != "blora":
            raise TrainError("--fixed-gate-steps only applies to --method blora (other methods have fixed gates)")
        self.blora_config()  # raises ConfigError with the option's name
        return self

    def _check_data(self) -> None:
        files = (self.train_file, self.validation_file)
        if self.data_dir and any(files):
            raise TrainError("pass either --data-dir or --train-file/--validation-file, not both")
        if any(files) and not all(files):
            raise TrainError("pass both --train-file and --validation-file (or --data-dir with train and dev files)")
        if self.task == CLASSIFICATION and not (self.data_dir or all(files)):
            raise TrainError("--task classification needs data: --train-file and --validation-file, or --data-dir")
        for path in (self.data_dir, *files):
            if path and not Path(path).exists():
                raise TrainError(f"data path {path} does not exist")

    # ---- derived configs --------------------------------------------------------------------
    def blora_config(self):
        """The BLoRAConfig these options describe (validated: a ConfigError names the bad value)."""
        from blora_export.config import BLoRAConfig

        targets: Any = self.lora_targets
        if targets not in ("qkv", "all-linear"):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        knobs = {"max_rank": self.max_rank, "lora_alpha": self.lora_alpha, "bops_weight": self.bops_weight,
                 "rank_weight": self.rank_weight, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                 "init_weight_bits": self.init_weight_bits, "init_act_bits": self.init_act_bits,
                 "embedding_bits": self.embedding_bits, "gate_init": self.gate_init, "seq_len": self.bops_seq_len}
        given = {k: (tuple(v) if isinstance(v, list | tuple) else v) for k, v in knobs.items() if v is not None}
        cfg = BLoRAConfig(method=self.method, targets=targets, qat_w_bits=self.w_bits, qat_a_bits=self.a_bits,
                          per_channel_weights=not self.per_tensor_weights, **given)
        return cfg.validate()

    @property
    def state_dir(self) -> Path:
        """Where the run keeps its working state (resume snapshots, the live log): a sibling of the output."""
        out = Path(self.output_dir).resolve()
        return out.with_name(out.name + ".state")

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainError(f"unknown training options: {unknown}")
        kw = dict(d)
        for key in ("weight_bits", "act_bits"):
            if kw.get(key) is not None:
                kw[key] = tuple(int(b) for b in kw[key])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def resume_key(self) -> dict[str, Any]:
        """The options that must match for --resume to continue the same run."""
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}


def _flag(name: str) -> str:
    return name.replace("_", "-")
