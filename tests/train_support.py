"""Helpers shared by the training tests: toy GLUE-layout data and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from blora_export.cli import main
from blora_export.testing import synthetic_sentiment


def write_glue_sst2(directory: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    """A learnable toy task in SST-2's GLUE layout: train.tsv / dev.tsv with header `sentence<TAB>label`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train.tsv", n_train, seed), ("dev.tsv", n_dev, seed + 1)):
        rows = synthetic_sentiment(n, s)
        lines = ["sentence\tlabel"] + [f"{r['sentence']}\t{r['label']}" for r in rows]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


# Small and fast: 16 tokens, MACs counted at T = 16, batches of 16. A tiny model's attention products (fp32)
# are a large share of its BOPs, so the default 10% budget is out of its reach: 30% is not. Kernels run eagerly
# (compiling them takes longer than a tiny run; tests/test_fused.py checks the compiled ones).
FAST = ["--task", "sst2", "--max-seq-length", "16", "--bops-seq-len", "16", "--batch-size", "16",
        "--eval-batch-size", "32", "--calibration-batches", "2", "--logging-steps", "2", "--bops-budget", "0.3",
        "--compile", "off"]


def train_cli(*args, env: dict | None = None):
    """`blora-export train ARGS` in-process; returns click's Result."""
    return CliRunner().invoke(main, ["train", *[str(a) for a in args]], env=env, catch_exceptions=True)


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def trained_tensors(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt) / "trained.safetensors"))
