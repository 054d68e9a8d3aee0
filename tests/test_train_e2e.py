"""End to end through the CLI on tiny random BERT and DeBERTa-v2: every method trains, the checkpoint reloads
strictly, and exactly the adapters, gates, ranges and head changed while the backbone stayed as it was."""

import json

import numpy as np
import pytest
import torch
from train_support import FAST, assert_ok, read_jsonl, train_cli, write_glue_sst2

from blora_export import gates
from blora_export.base_model import load_base_model
from blora_export.checkpoint import load_checkpoint, read_validation
from blora_export.data import Example, glue_task
from blora_export.inject import inject, wrapped_linears
from blora_export.roles import trained_keys
from train.batching import encode
from train.evaluate import evaluate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_glue_sst2(tmp_path_factory.mktemp("e2e-data"), n_train=64, n_dev=24)


def _fresh_injected(meta, seed):
    """The model exactly as training started: same seed before loading (head init) and inject (lora_A init)."""
    torch.manual_seed(seed)
    model = load_base_model(meta.base_model, len(meta.labels), meta.id2label, meta.problem_type)
    inject(model, meta.config, adapted=meta.adapted)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["blora", "lora", "qat"])
def test_train_each_method(tmp_path, tiny_model_dir, data, method):
    out = tmp_path / "ckpt"
    extra = ["--gate-lr", "0.3", "--gate-init", "1.0"] if method == "blora" else []
    result = train_cli("--model", tiny_model_dir, "--data-dir", data, *FAST, "--method", method, "--max-steps", "6",
                       "--eval-steps", "3", "--lr", "5e-3", *extra, "--output-dir", out)
    assert_ok(result)
    assert "validation (deterministic gates)" in result.output and "w_bits" in result.output

    model, meta = load_checkpoint(out)  # strict: every trained tensor, nothing else
    assert meta.task == "sst2" and meta.labels == ["negative", "positive"] and meta.base_model == str(tiny_model_dir)
    assert meta.options["method"]["method"] == method and meta.config.method == method

    # Only adapters, gates, ranges and the head differ from the untrained starting point.
    start = _fresh_injected(meta, seed=42).state_dict()
    trained = model.state_dict()
    changed = {k for k in trained if not torch.equal(trained[k], start[k])}
    assert changed, "nothing trained"
    assert changed <= trained_keys(model, meta.head), sorted(changed - trained_keys(model, meta.head))[:5]
    assert any(k.startswith("classifier.") for k in changed)
    layers = wrapped_linears(model)
    adapters = [m for m in layers.values() if m.max_rank]
    assert adapters and all(float(m.lora_B.detach().abs().max()) > 0 for m in adapters)
    assert any(k.endswith("lora_A") for k in changed)

    # The summary's metrics come back from the reloaded checkpoint: the in-memory model had no other changes.
    summary = json.loads((out / "summary.json").read_text())
    examples = [Example(e["text"], e.get("text_pair"), e["label"]) for e in read_validation(out)]
    assert len(examples) == 24
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    again = evaluate(model, tokenizer, encode(tokenizer, examples, 16), glue_task("sst2"), 32, torch.device("cpu"))
    assert again["loss"] == pytest.approx(summary["metrics"]["loss"], rel=1e-6, abs=1e-7)
    assert again["accuracy"] == summary["metrics"]["accuracy"]

    widths = {name: m.widths() for name, m in layers.items()}
    if method == "lora":
        assert set(widths.values()) == {(32, 32)} and summary["bops"]["whole_model"]["reduction"] == 0
        assert set(summary["ranks"].values()) == {8}
    elif method == "qat":
        assert set(widths.values()) == {(8, 8)} and set(summary["ranks"].values()) == {8}
    else:
        # Gates moved and are partly open: some levels/ranks on, some off.
        learned = [la for n, la in model.named_parameters() if n.endswith("log_alpha") and la.numel()
                   and "embeddings" not in n]
        opened = torch.cat([gates.is_open(la).flatten() for la in learned])
        assert 0 < int(opened.sum()) < opened.numel()
        assert any(k.endswith("log_alpha") for k in changed)
        assert summary["bops"]["whole_model"]["reduction"] > 0
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if "eval" in r] == [3, 6]
    assert np.isfinite([r["task_loss"] for r in records if "task_loss" in r]).all()
