"""The checkpoint: the hand-off from `train` to `compress`. JSON and safetensors only, never pickle.

CKPT/
  checkpoint.json       schema version, base model reference and fingerprint, config, resolved names, labels
  trained.safetensors   every trained tensor (LoRA factors, gate log_alphas, quantizer ranges, head)
  summary.json          training summary (validation metrics with deterministic gates, ranks, widths, BOPs)
  validation.jsonl      a few validation examples, used by `compress` to verify the export
  metrics.jsonl         the training log (optional, written by `train`)
  tokenizer files
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_directory
from .base_model import fingerprint, load_base_model
from .bops import MacProfile
from .config import BLoRAConfig, ConfigError
from .data.tasks import MAX_LENGTH_LIMIT, PROBLEM_TYPES, TASK_NAMES
from .errors import UserError, file_problem, first_line
from .inject import Injection, inject
from .roles import trained_keys, trained_state
from .targets import TargetError
from .typed_json import from_json, parse_json

SCHEMA_VERSION = 2  # 2: learned BOP price and budget, deploy target, log-parameterised affine ranges
META_FILE = "checkpoint.json"
WEIGHTS_FILE = "trained.safetensors"
SUMMARY_FILE = "summary.json"
VALIDATION_FILE = "validation.jsonl"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded; the message says what is wrong and what to do."""


@dataclass
class CheckpointMeta:
    base_model: str
    base_fingerprint: str
    blora: dict[str, Any]
    adapted: list[str]
    quantized: list[str]
    embeddings: list[str]
    head: list[str]
    labels: list[str]
    mac_profile: dict[str, Any]
    task: str = "classification"
    problem_type: str = "single_label_classification"
    max_seq_length: int = 128
    base_revision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the training options, for the record
    schema_version: int = SCHEMA_VERSION

    @property
    def config(self) -> BLoRAConfig:
        return BLoRAConfig.from_dict(self.blora)

    @property
    def profile(self) -> MacProfile:
        return MacProfile.from_dict(self.mac_profile)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


def save_checkpoint(out_dir: str | Path, model: nn.Module, meta: CheckpointMeta, tokenizer=None,
                    summary: dict | None = None, validation: list[dict] | None = None,
                    overwrite: bool = False, extra_files: dict[str, str] | None = None) -> Path:
    """Write the checkpoint atomically; `extra_files` (name -> text, e.g. the training log) go in the same commit."""
    from safetensors.torch import save_file

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(trained_state(model, meta.head), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True), encoding="utf-8")
        if summary is not None:
            (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
        if validation:
            lines = [json.dumps(ex, sort_keys=True, ensure_ascii=False) for ex in validation]
            (tmp / VALIDATION_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)


def _parse_meta(raw: dict) -> CheckpointMeta:
    """checkpoint.json as CheckpointMeta: JSON types of every field (the B-LoRA config's and the MAC profile's
    too: a string where a list belongs would otherwise be read letter by letter), then the values `compress` and
    `eval` rely on, each error naming its field."""
    meta = from_json(CheckpointMeta, raw, "")
    blora_types = typing.get_type_hints(BLoRAConfig)
    for key, value in meta.blora.items():
        if key in blora_types:  # unknown keys: BLoRAConfig.from_dict names them
            parse_json(value, blora_types[key], f"blora.{key}")
    profile = from_json(MacProfile, meta.mac_profile, "mac_profile")
    try:
        meta.config.validate()
    except ConfigError as e:
        raise ValueError(f"blora: {e}") from None
    problems = []
    if not meta.base_model:
        problems.append("base_model is empty")
    if not meta.labels or not all(meta.labels) or len(set(meta.labels)) != len(meta.labels):
        problems.append(f"labels {meta.labels!r:.80} are not distinct non-empty names")
    if meta.problem_type not in PROBLEM_TYPES:
        problems.append(f"problem_type {meta.problem_type!r} is not one of {list(PROBLEM_TYPES)}")
    elif (meta.problem_type == "regression") != (len(meta.labels) == 1):
        problems.append(f"problem_type {meta.problem_type} does not fit {len(meta.labels)} labels")
    if meta.task not in TASK_NAMES:
        problems.append(f"task {meta.task!r} is not one of {list(TASK_NAMES)}")
    if not 2 <= meta.max_seq_length <= MAX_LENGTH_LIMIT:  # 2: room for the special tokens, as `train` requires
        problems.append(f"max_seq_length {meta.max_seq_length} is outside 2..{MAX_LENGTH_LIMIT}")
    if profile.seq_len < 1 or profile.attention < 0 or min(profile.linears.values(), default=0) < 0:
        problems.append("mac_profile has a seq_len below 1 or negative MACs")
    if problems:
        raise ValueError("; ".join(problems))
    return meta


def check_contained(ckpt: str | Path) -> None:
    """No file of the checkpoint may lead outside it (a symbolic link to elsewhere)."""
    root = Path(ckpt).resolve()
    for path in Path(ckpt).rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise CheckpointError(f"{path} links outside the checkpoint directory {ckpt}; copy the real file in")


def check_no_remote_code(ckpt: str | Path, trust_remote_code: bool) -> None:
    """Refuse custom code (auto_map) shipped with a checkpoint's config or tokenizer unless explicitly trusted."""
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(ckpt) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise CheckpointError(f"{path} asks to run custom code (auto_map); pass --trust-remote-code only if "
                                  "you trust its author")


def read_meta(ckpt: str | Path) -> CheckpointMeta:
    path = Path(ckpt) / META_FILE
    if not Path(ckpt).is_dir():
        problem = "is not a directory" if Path(ckpt).exists() else "does not exist"
        raise CheckpointError(f"checkpoint directory {ckpt} {problem}; pass the --output-dir of a train run")
    check_contained(ckpt)
    if not path.is_file():
        problem = "is missing" if not path.exists() else file_problem(path)
        raise CheckpointError(f"{path} {problem}; {ckpt} is not a complete blora-export checkpoint")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, train it again") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object; the checkpoint is damaged, train it again")
    version = raw.get("schema_version")
    if version == 1:
        raise CheckpointError(f"{path} was written by an earlier blora-export (checkpoint schema 1, before learned "
                              "BOP budgets and affine activation ranges); train it again with this version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise CheckpointError(f"{path} has schema version {version!r}; this blora-export reads version "
                              f"{SCHEMA_VERSION}: upgrade blora-export or re-train")
    try:
        meta = _parse_meta(raw)
    except (TypeError, KeyError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{path} has invalid fields ({e}); the checkpoint is damaged, train it again") from None
    return meta


def read_tensors(ckpt: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ckpt) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {ckpt} is not a complete blora-export checkpoint")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({e}); re-train or restore the file") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or inf; the training run diverged")
    return tensors


def build_model(meta: CheckpointMeta, base: nn.Module | None = None,
                trust_remote_code: bool = False) -> tuple[nn.Module, Injection]:
    """The base model with the checkpoint's exact injection (names from the checkpoint, never re-resolved)."""
    if base is None:
        try:
            base = load_base_model(meta.base_model, len(meta.labels), meta.id2label, meta.problem_type,
                                   trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot load the base model {meta.base_model!r} this checkpoint was trained on "
                                  f"({first_line(e)}); make it available at that name or path") from None
    found = fingerprint(base, tuple(meta.head))
    if found != meta.base_fingerprint:
        raise CheckpointError(f"base model {meta.base_model} does not match the one this checkpoint was trained on "
                              f"(weights fingerprint {found[:12]} != {meta.base_fingerprint[:12]})")
    injection = inject(base, meta.config, adapted=meta.adapted, fit_tables=False)  # load_checkpoint restores them
    if injection.quantized != meta.quantized or injection.embeddings != meta.embeddings:
        raise CheckpointError(f"base model {meta.base_model} has other modules than the checkpoint expects")
    return base, injection


def load_checkpoint(ckpt: str | Path, base: nn.Module | None = None,
                    trust_remote_code: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the trained model strictly: every trained tensor present, with the right shape, nothing extra."""
    meta = read_meta(ckpt)
    tensors = read_tensors(ckpt)
    try:
        model, _ = build_model(meta, base, trust_remote_code)
    except (TargetError, ConfigError) as e:  # module names in checkpoint.json that the base model lacks
        raise CheckpointError(f"{Path(ckpt) / META_FILE} does not fit the base model {meta.base_model} ({e}); the "
                              "checkpoint is damaged, train it again") from None
    keys = trained_keys(model, meta.head)
    expected = {k: v for k, v in model.state_dict().items() if k in keys}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{ckpt}: tensors do not match the model (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); the checkpoint belongs to another model or config")
    for key, t in tensors.items():
        if t.shape != expected[key].shape or t.dtype != expected[key].dtype:
            raise CheckpointError(f"{ckpt}: tensor {key} has shape {tuple(t.shape)} {t.dtype}, expected "
                                  f"{tuple(expected[key].shape)} {expected[key].dtype}")
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, meta


def read_validation(ckpt: str | Path) -> list[dict]:
    path = Path(ckpt) / VALIDATION_FILE
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON lines ({e}); pass --validation-file or --no-verify") \
            from None
    return [r for r in rows if isinstance(r, dict)]
