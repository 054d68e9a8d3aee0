"""The training stage of blora-export: `run(TrainConfig)` fine-tunes an encoder with B-LoRA (or the LoRA and
QAT baselines) and writes the checkpoint that `blora-export compress` reads.

Modules, one concept each: options (TrainConfig = method + data + optimisation), batching (tokenizing, data
order), schedules, optim (parameter groups, phase-2 gate freezing), distributed, loop, evaluate, state (resume
snapshots), runlog, report, pipeline (the whole run). Reading the data is the library's (blora_export.data).
Importing this package is cheap; torch and transformers load when `run` is called.
"""

from __future__ import annotations

from .errors import TrainError
from .options import TrainConfig


def run(config: TrainConfig) -> dict:
    """Train as configured and write the checkpoint; returns the training summary (empty on ranks > 0)."""
    from .pipeline import run as _run

    return _run(config)


__all__ = ["TrainConfig", "TrainError", "run"]
