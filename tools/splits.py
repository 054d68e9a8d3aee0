"""A fixed, seeded, stratified train/validation split written as CSV files (the benchmark data tools share it)."""

from __future__ import annotations

import csv
import random
from pathlib import Path


def split(rows: list[dict], validation_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out validation_size // n_labels rows of every label, chosen by a seeded shuffle."""
    rng = random.Random(seed)
    labels = sorted({r["label"] for r in rows})
    per_label = validation_size // len(labels)
    train, validation = [], []
    for label in labels:
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        validation += group[:per_label]
        train += group[per_label:]
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def write_split(out_dir: Path, rows: list[dict], validation_size: int, seed: int) -> str:
    """OUT_DIR/train.csv and OUT_DIR/validation.csv; returns a one-line report."""
    train, validation = split(rows, validation_size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "train.csv", train)
    write(out_dir / "validation.csv", validation)
    return f"wrote {len(train)} train and {len(validation)} validation rows to {out_dir}"
