"""Reproducibility: the same seed trains byte-identical checkpoints on CPU; the same checkpoint compresses to
byte-identical files (test_export_pipeline.py checks model.onnx/audit.json/deploy.json of a hand-made checkpoint;
this checks every file of a trained one, through the API and the command line)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from reliability_support import ROOT, train_args, trained_checkpoint, tree_hashes
from train_support import assert_ok, train_cli

from blora_export.cli import main
from blora_export.export.pipeline import CompressOptions, compress


@pytest.mark.slow
def test_same_seed_trains_identical_bytes(tmp_path):
    again = tmp_path / "again"
    assert_ok(train_cli(*train_args(again, "--max-steps", "2")))
    first = trained_checkpoint()
    assert (again / "trained.safetensors").read_bytes() == (first / "trained.safetensors").read_bytes()
    # Everything else but the run's own bookkeeping (paths, timings) is identical too.
    volatile = {"checkpoint.json", "summary.json", "metrics.jsonl"}
    a, b = tree_hashes(first), tree_hashes(again)
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}


@pytest.mark.slow
def test_same_checkpoint_compresses_to_identical_files(tmp_path):
    ckpt = trained_checkpoint()
    outs = [ROOT / "det-api-1", tmp_path / "det-api-2"]
    for out in outs:
        compress(ckpt, out, CompressOptions(timing_runs=0, overwrite=True))
    first, second = tree_hashes(outs[0]), tree_hashes(outs[1])
    assert {"model.onnx", "audit.json", "deploy.json", "audit.md", "audit.png"} <= set(first)
    assert first == second

    # The command line writes the same files; only audit.md differs, as it reports measured latencies.
    cli_out = tmp_path / "det-cli"
    result = CliRunner().invoke(main, ["compress", str(ckpt), "-o", str(cli_out)])
    assert result.exit_code == 0, result.output
    cli = tree_hashes(cli_out)
    assert set(cli) == set(first)
    assert {k: v for k, v in cli.items() if k != "audit.md"} == {k: v for k, v in first.items() if k != "audit.md"}
