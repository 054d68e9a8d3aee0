"""Encoder families beyond the fixtures' four, found from their structure alone: a short B-LoRA run, compress
(onnxruntime verified against the integer-exact reference), and the audit's Linear MACs - read from the ONNX
graph - against a hand count from the config."""

import json

import pytest
from train_support import FAST, assert_ok, train_cli, write_glue_sst2
from transformers import AutoConfig

from blora_export.export.pipeline import CompressOptions, compress
from blora_export.testing import make_tiny_model

T = 16  # FAST's sequence length: MACs are counted at T tokens

FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert", "mpnet", "deberta",
            "deberta-v2", "modernbert"]


def hand_linear_macs(cfg) -> int | None:
    """MACs of the encoder's Linears for T tokens, from the config; None where relative-position projections
    (DeBERTa) make a formula longer than the code it would check."""
    mt = cfg.model_type
    if mt.startswith("deberta"):
        return None
    if mt == "distilbert":
        h, i, layers = cfg.dim, cfg.hidden_dim, cfg.n_layers
    else:
        h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    if mt == "modernbert":  # fused Wqkv, Wo; a gated MLP whose input projection makes 2 x intermediate
        per_layer = 3 * h * h + h * h + h * 2 * i + i * h
    else:  # Q, K, V, attention output; FFN in and out (ALBERT: one shared layer, run num_hidden_layers times)
        per_layer = 4 * h * h + 2 * h * i
    projection = cfg.embedding_size * h if getattr(cfg, "embedding_size", h) != h else 0  # ALBERT, ELECTRA
    return (per_layer * layers + projection) * T


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_glue_sst2(tmp_path_factory.mktemp("arch-data"), n_train=48, n_dev=16)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_family_trains_exports_and_audits(model_type, data, tmp_path):
    model_dir = make_tiny_model(tmp_path / "model", model_type)
    ckpt = tmp_path / "ckpt"
    assert_ok(train_cli("--model", model_dir, "--data-dir", data, *FAST, "--max-steps", "4", "--output-dir", ckpt))
    summary = json.loads((ckpt / "summary.json").read_text())
    assert summary["bop_fraction"] <= 0.3  # FAST's budget holds for every family
    result = compress(ckpt, tmp_path / "out", CompressOptions(timing_runs=0))
    audit = result.audit.to_dict()
    assert audit["verify"]["within_tolerance"]
    quantized = set(result.plan.quantized)
    adapted = [r for r in audit["layers"] if r["kind"] == "linear" and r["name"] in result.plan.adapted]
    assert adapted and all(r["rank"] for r in adapted)
    audited = sum(r["macs"] for r in audit["layers"] if r["kind"] == "linear" and r["name"] in quantized)
    expected = hand_linear_macs(AutoConfig.from_pretrained(model_dir))
    if expected is not None:
        assert audited == expected
    assert audit["totals"]["whole_model"]["reduction"] >= 0.7


def test_an_encoder_without_plain_linear_layers_is_one_clear_line(data, tmp_path):
    model_dir = make_tiny_model(tmp_path / "model", "ibert")  # I-BERT: integer QuantLinear modules
    result = train_cli("--model", model_dir, "--data-dir", data, *FAST, "--max-steps", "1", "--output-dir",
                       tmp_path / "ckpt")
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "not supported" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "ckpt").exists()
