"""Resume snapshots: everything a run needs to continue exactly, as safetensors + JSON (never pickle).

STATE/ (CKPT.state, a sibling of the output directory)
  metrics.jsonl            the live training log (see runlog.py)
  latest/                  the newest snapshot, replaced atomically every --save-steps
    state.json             step, options, data-order record, optimizer skeletons, python and numpy RNG states,
                           extras (the BOP price and its path, the budget's closures)
    trained.safetensors    trained tensors (adapters, gates, ranges, head)
    optimizer.safetensors  the optimizers' moments and step counts, flattened ("<optimizer>.state.<index>.<key>")
    rng.safetensors        torch RNG states (cpu, each cuda device)

The learning-rate schedule, the phases and the data order are pure functions of the step and seed, so
the step is their whole state. Per-step randomness is reseeded from (seed, step, rank) as well (loop.py); the
saved RNG states are restored too, for anything else that draws random numbers.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blora_export.atomic import atomic_directory
from blora_export.errors import first_line
from blora_export.roles import trained_keys, trained_state

from .errors import TrainError

SNAPSHOT = "latest"
STATE_FILE = "state.json"
FORMAT = 2


@dataclass
class Snapshot:
    step: int
    options: dict[str, Any]
    data: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # one state dict per optimizer (train.optim.Optimizers.state_dict)
    rng: dict[str, Any]
    extras: dict[str, Any]  # the price and its path, the budget's closures


# ---- optimizer state <-> tensors + JSON -------------------------------------------------------------
def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, state = {}, {}
    for index, entries in state_dict["state"].items():
        state[str(index)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                name = f"state.{index}.{key}"
                tensors[name] = value.detach().cpu().clone()  # a copy: the live state keeps changing
                state[str(index)][key] = {"tensor": name}
            else:
                state[str(index)][key] = {"value": value}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"state": state, "param_groups": groups}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {int(i): {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entries.items()}
             for i, entries in skeleton["state"].items()}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in skeleton["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- RNG states -------------------------------------------------------------------------------------
def rng_states() -> tuple[dict, dict[str, torch.Tensor]]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    as_json = {"python": [version, list(internal), gauss],
               "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return as_json, tensors


def restore_rng(rng: dict[str, Any]) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["tensors"]["torch_cpu"])
    cuda = [rng["tensors"][k] for k in sorted(rng["tensors"]) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---- snapshots --------------------------------------------------------------------------------------
def snapshot_dir(root: Path) -> Path | None:
    """The newest complete snapshot. A kill between the two renames that replace `latest` leaves the previous
    snapshot in `.latest.old-*/x` (atomic_directory) and no `latest`: that one is still complete and is used."""
    latest = Path(root) / SNAPSHOT
    if (latest / STATE_FILE).is_file():
        return latest
    old = sorted(Path(root).glob(f".{SNAPSHOT}.old-*/x/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    return old[-1].parent if old else None


def has_snapshot(root: Path) -> bool:
    return snapshot_dir(root) is not None


def snapshot_step(root: Path) -> int | None:
    directory = snapshot_dir(root)
    try:
        return int(json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))["step"]) if directory else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_finite(model: nn.Module, head: list[str], step: int) -> None:
    """Never save NaN or inf weights: `compress` would refuse them, and a resume would only continue the damage."""
    bad = [k for k, v in sorted(trained_state(model, head).items()) if v.is_floating_point() and
           not torch.isfinite(v).all()]
    if bad:
        raise TrainError(f"training diverged: after step {step} the trained tensor {bad[0]} holds NaN or inf and "
                         "nothing was saved; lower --lr, --range-lr or --gate-lr and train again")


def save_snapshot(root: Path, step: int, model: nn.Module, head: list[str], optimizer, options: dict[str, Any],
                  data: dict[str, Any], extras: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    check_finite(model, head, step)
    opt_tensors, skeleton = {}, {}
    for name, state in optimizer.state_dict().items():
        tensors, skeleton[name] = flatten_optimizer(state)
        opt_tensors.update({f"{name}.{k}": v for k, v in tensors.items()})
    rng_json, rng_tensors = rng_states()
    record = {"format": FORMAT, "step": step, "options": options, "data": data, "optimizer": skeleton,
              "rng": rng_json, "extras": extras}
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        with atomic_directory(Path(root) / SNAPSHOT, overwrite=True) as tmp:
            save_file(trained_state(model, head), str(tmp / "trained.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            (tmp / STATE_FILE).write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
    except OSError as e:  # a full disk: the previous snapshot (if any) is left as it was
        raise TrainError(f"cannot save the resume state in {root} at step {step} ({e.strerror or e}); free space "
                         "or pass a larger --save-steps") from None


# The types state.json's entries must have: a damaged file is refused before any value is used.
RECORD_TYPES = {"step": int, "options": dict, "data": dict, "optimizer": dict, "rng": dict, "extras": dict}


def load_snapshot(root: Path) -> Snapshot:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = snapshot_dir(root) or Path(root) / SNAPSHOT
    try:
        record = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "trained.safetensors"))
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
        rng_tensors = load_file(str(directory / "rng.safetensors"))
    except (OSError, ValueError, RecursionError, SafetensorError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise damaged(directory, f"unreadable: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise TrainError(f"the resume state in {directory} has format {found!r}, expected {FORMAT}; "
                         "pass --overwrite to start over")
    for key, kind in RECORD_TYPES.items():
        if not isinstance(record.get(key), kind) or isinstance(record[key], bool):
            raise damaged(directory, f"{STATE_FILE}: {key!r} is missing or not a JSON {kind.__name__}")
    for name, group in (("trained", tensors), ("optimizer", opt_tensors)):
        bad = [k for k, v in sorted(group.items()) if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise damaged(directory, f"{name} tensor {bad[0]} holds NaN or inf")
    with restoring(directory):
        optimizer = {name: unflatten_optimizer({k[len(name) + 1:]: v for k, v in opt_tensors.items()
                                                if k.startswith(name + ".")}, skeleton)
                     for name, skeleton in record["optimizer"].items()}
        return Snapshot(record["step"], record["options"], record["data"], tensors, optimizer,
                        {**record["rng"], "tensors": rng_tensors}, record["extras"])


def damaged(directory: Path, problem: str) -> TrainError:
    return TrainError(f"the resume state in {directory} is damaged ({problem}); pass --overwrite to start over")


@contextlib.contextmanager
def restoring(directory: Path) -> Iterator[None]:
    """Restoring a snapshot's values (optimizer skeletons, RNG states, the price): any value of the wrong kind or
    shape is a damaged snapshot, not a bug, whatever error the library that takes it raises."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise damaged(directory, f"{type(e).__name__}: {first_line(e)}") from None


def check_optimizer_shapes(optimizers: list, directory: Path) -> None:
    """torch accepts optimizer moments of any shape and fails only at the next step: check them now."""
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.numel() > 1 and value.shape != p.shape:
                        raise damaged(directory, f"optimizer {key} has shape {list(value.shape)}, "
                                                 f"its parameter {list(p.shape)}")


def load_trained(model: nn.Module, head: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Put snapshot tensors into the model: exactly its trained tensors, with the same shapes."""
    own = model.state_dict()
    expected = trained_keys(model, head) & set(own)
    bad = sorted(expected.symmetric_difference(tensors)) + [k for k in tensors if k in own
                                                            and own[k].shape != tensors[k].shape]
    if bad:
        raise TrainError(f"the resume state does not fit this model (e.g. {bad[0]}); pass --overwrite to start over")
    model.load_state_dict(tensors, strict=False)
