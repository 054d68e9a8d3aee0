"""Validation with deterministic gates (model.eval()): the numbers the exported model must reproduce."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from blora_export.data import Task, metrics

from .batching import Encoded, collate


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Summed (not averaged) task loss, so shards of a global batch add up to the full batch's loss."""
    logits = logits.float()
    if regression:
        return torch.nn.functional.mse_loss(logits.reshape(-1), labels.float(), reduction="sum")
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer, data: Encoded, task: Task, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """The task's metrics and mean loss over `data`, in fp32 (the export is checked against these)."""
    was_training = model.training
    model.eval()
    all_logits, total = [], 0.0
    try:
        for start in range(0, len(data), batch_size):
            batch = collate(tokenizer, data, range(start, min(start + batch_size, len(data))), task.is_regression)
            labels = batch.pop("labels").to(device)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            total += float(loss_sum(logits, labels, task.is_regression))
            all_logits.append(logits.cpu().numpy())
    finally:
        model.train(was_training)
    result = metrics.compute(task.metrics, np.concatenate(all_logits), np.asarray(data.labels), task.is_regression)
    result["loss"] = total / max(1, len(data))
    return result
