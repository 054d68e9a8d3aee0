"""--resume after an interruption reaches the same final state as an uninterrupted run (CPU, bitwise)."""

import json

import pytest
import torch
from train_support import FAST, assert_ok, read_jsonl, train_cli, trained_tensors, write_glue_sst2

from train.loop import INTERRUPT_ENV


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_glue_sst2(tmp_path_factory.mktemp("resume-data"), n_train=80, n_dev=16)


@pytest.mark.slow
def test_resume_is_exact(tmp_path, tiny_bert_dir, data):
    # 9 steps over 5 batches per epoch: gates learn from step 2, the snapshot (every 3 steps: step 6) and the
    # interruption (after step 8) fall mid-epoch, and phase 2 (frozen gates, the last 3 steps after the budget
    # is enforced) starts before the resume: the price, its path and the closures come back from the snapshot.
    args = ["--model", tiny_bert_dir, "--data-dir", data, *FAST, "--max-steps", "9", "--fixed-gate-ratio", "0.34",
            "--gate-warmup-ratio", "0.2", "--save-steps", "3", "--gate-lr", "5", "--gate-init", "1.0",
            "--bops-budget", "0.15"]
    assert_ok(train_cli(*args, "--output-dir", tmp_path / "straight"))

    out = tmp_path / "interrupted"
    result = train_cli(*args, "--output-dir", out, env={INTERRUPT_ENV: "8"})
    assert result.exit_code != 0 and not out.exists()
    state = tmp_path / "interrupted.state"
    assert json.loads((state / "latest" / "state.json").read_text())["step"] == 6
    # Safetensors and JSON only: nothing pickled.
    assert {p.suffix for p in (state / "latest").iterdir()} == {".json", ".safetensors"}
    assert max(r["step"] for r in read_jsonl(state / "metrics.jsonl")) == 8  # cut back to 6 on resume

    # Without --resume the interrupted run is protected; with it, training continues from step 6.
    refused = train_cli(*args, "--output-dir", out)
    assert refused.exit_code == 2 and "--resume" in refused.output
    assert_ok(train_cli(*args, "--output-dir", out, "--resume"))
    assert not state.exists()

    straight, resumed = trained_tensors(tmp_path / "straight"), trained_tensors(out)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # Phase 2 froze the learned (width) gates at their test-time values, and the log tells one history.
    assert all(v.abs().min() == 30 for k, v in resumed.items() if k.endswith("_quantizer.log_alpha") and v.numel()
               and "embeddings" not in k)
    log_straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    log_resumed = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log_resumed] == [r["step"] for r in log_straight]
    assert [r.get("task_loss") for r in log_resumed] == pytest.approx([r.get("task_loss") for r in log_straight])
    summaries = [json.loads((d / "summary.json").read_text())["price"] for d in (tmp_path / "straight", out)]
    assert summaries[0]["path"] == summaries[1]["path"] and summaries[0]["closed_by_budget"] == \
        summaries[1]["closed_by_budget"]


def test_resume_needs_matching_options_and_state(tmp_path, tiny_bert_dir, data):
    args = ["--model", tiny_bert_dir, "--data-dir", data, *FAST, "--max-steps", "4", "--save-steps", "2"]
    out = tmp_path / "run"
    missing = train_cli(*args, "--output-dir", out, "--resume")
    assert missing.exit_code == 2 and "no resume state" in missing.output
    assert train_cli(*args, "--output-dir", out, env={INTERRUPT_ENV: "3"}).exit_code != 0
    changed = train_cli(*args[:-4], "--max-steps", "5", "--save-steps", "2", "--output-dir", out, "--resume")
    assert changed.exit_code == 2 and "optim.max_steps" in changed.output, changed.output
    assert_ok(train_cli(*args, "--output-dir", out, "--overwrite"))  # --overwrite starts over
    assert not (tmp_path / "run.state").exists()
