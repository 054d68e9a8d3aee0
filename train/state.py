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

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blora_export.atomic import atomic_directory
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


def save_snapshot(root: Path, step: int, model: nn.Module, head: list[str], optimizer, options: dict[str, Any],
                  data: dict[str, Any], extras: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    opt_tensors, skeleton = {}, {}
    for name, state in optimizer.state_dict().items():
        tensors, skeleton[name] = flatten_optimizer(state)
        opt_tensors.update({f"{name}.{k}": v for k, v in tensors.items()})
    rng_json, rng_tensors = rng_states()
    record = {"format": FORMAT, "step": step, "options": options, "data": data, "optimizer": skeleton,
              "rng": rng_json, "extras": extras}
    Path(root).mkdir(parents=True, exist_ok=True)
    with atomic_directory(Path(root) / SNAPSHOT, overwrite=True) as tmp:
        save_file(trained_state(model, head), str(tmp / "trained.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps(record, sort_keys=True), encoding="utf-8")


def load_snapshot(root: Path) -> Snapshot:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = snapshot_dir(root) or Path(root) / SNAPSHOT
    try:
        record = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "trained.safetensors"))
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
        rng_tensors = load_file(str(directory / "rng.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TrainError(f"the resume state in {directory} is unreadable ({e}); pass --overwrite to start over") \
            from None
    if record.get("format") != FORMAT:
        raise TrainError(f"the resume state in {directory} has format {record.get('format')!r}, expected {FORMAT}")
    optimizer = {name: unflatten_optimizer({k[len(name) + 1:]: v for k, v in opt_tensors.items()
                                            if k.startswith(name + ".")}, skeleton)
                 for name, skeleton in record["optimizer"].items()}
    return Snapshot(int(record["step"]), record["options"], record["data"], tensors, optimizer,
                    {**record["rng"], "tensors": rng_tensors}, record["extras"])


def load_trained(model: nn.Module, head: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Put snapshot tensors into the model: exactly its trained tensors, with the same shapes."""
    own = model.state_dict()
    expected = trained_keys(model, head) & set(own)
    bad = sorted(expected.symmetric_difference(tensors)) + [k for k in tensors if k in own
                                                            and own[k].shape != tensors[k].shape]
    if bad:
        raise TrainError(f"the resume state does not fit this model (e.g. {bad[0]}); pass --overwrite to start over")
    model.load_state_dict(tensors, strict=False)
