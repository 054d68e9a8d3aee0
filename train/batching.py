"""Tokenized examples and batches. The data order is a pure function of (seed, epoch) and the batch of a
training step a pure function of (seed, step), so a resumed or distributed run sees exactly the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from blora_export.data import Example


@dataclass
class Encoded:
    features: dict[str, list[list[int]]]  # input_ids, attention_mask (token_type_ids): unpadded
    labels: list[int | float]

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer, examples: list[Example], max_length: int) -> Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    features = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return Encoded({k: list(v) for k, v in features.items()}, [e.label for e in examples])


def collate(tokenizer, data: Encoded, indices, regression: bool) -> dict[str, torch.Tensor]:
    """Pad the selected examples to their longest; labels as class ids (long) or scores (float)."""
    batch = tokenizer.pad({k: [v[i] for i in indices] for k, v in data.features.items()}, return_tensors="pt")
    labels = [data.labels[i] for i in indices]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return dict(batch)


def shard(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous slice of a global batch (padded once for all ranks, so shapes agree)."""
    bounds = np.linspace(0, len(batch["labels"]), world_size + 1).round().astype(int)
    return {k: v[bounds[rank]:bounds[rank + 1]] for k, v in batch.items()}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class Schedule:
    """Which examples each training step sees."""

    n_examples: int
    batch_size: int  # global
    seed: int
    min_batch: int = 1  # a last batch smaller than this (the world size) is dropped, so no rank gets nothing

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n_examples, self.batch_size)
        return full + (1 if rest >= self.min_batch else 0)

    def steps_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.seed, epoch, self.n_examples)
        return order[position * self.batch_size:(position + 1) * self.batch_size]

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch
