"""Two CPU processes (torchrun, gloo) train to the same tensors as one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_support import FAST, assert_ok, read_jsonl, train_cli, trained_tensors, write_glue_sst2

from blora_export.testing import make_tiny_variant

# Same data, same gate samples (a generator seeded identically on every rank), gradients summed over ranks:
# the only difference left is floating-point summation order (per-rank GEMMs, the all-reduce).
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    # No dropout: its masks depend on each rank's batch shape, so they cannot match a single process; nor can the
    # frozen weights' sampled gradient (each rank draws rows of its own shard): the exact one is asked for.
    model = make_tiny_variant(tmp_path / "model", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_glue_sst2(tmp_path / "data", n_train=64, n_dev=16)
    args = ["--model", model, "--data-dir", data, *FAST, "--max-steps", "6", "--gate-lr", "0.3",
            "--gate-init", "1.0", "--save-steps", "100", "--frozen-weight-grad-rows", "1"]
    assert_ok(train_cli(*args, "--output-dir", tmp_path / "one"))

    script = Path(sys.executable).parent / "blora-export"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", *[str(a) for a in args], "--output-dir", str(tmp_path / "two"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one, two = trained_tensors(tmp_path / "one"), trained_tensors(tmp_path / "two")
    assert one.keys() == two.keys()
    for key in one:
        if one[key].is_floating_point():
            torch.testing.assert_close(two[key], one[key], rtol=RTOL, atol=ATOL, msg=key)
        else:
            assert torch.equal(two[key], one[key]), key
    # The run was not trivial: adapters trained, and the logs agree on the global loss.
    assert any(float(one[k].abs().max()) > 0 for k in one if k.endswith("lora_B"))
    losses = [[r["task_loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "task_loss" in r]
              for name in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    summary = (tmp_path / "two" / "summary.json").read_text()
    assert '"world_size": 2' in summary
