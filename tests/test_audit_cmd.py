"""`blora-export audit`: BOPs of any ONNX encoder (fp32, quantize_dynamic, quantize_static, compress outputs)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from export_support import SEQ_LEN, base_dir, compressed, hand_bops_tiny_bert, read_json

from blora_export.cli import main
from blora_export.export.audit_file import audit_onnx
from blora_export.testing import SPECIAL, WORDS

T = SEQ_LEN
# Tiny BERT (hidden 32, FFN 64, 2 layers, 2 heads) at batch 1 x T, by hand: per layer Q/K/V/attention-output
# T*32*32 MACs, FFN T*32*64 and T*64*32; pooler 32*32 and classifier 32*2 on one token; attention scores and
# context T*T*16 per head, 2 heads.
LINEAR_MACS = 2 * (4 * T * 32 * 32 + 2 * T * 32 * 64) + 32 * 32 + 32 * 2
ATTENTION_MACS = 2 * 2 * (2 * T * T * 16)
FP32 = (LINEAR_MACS + ATTENTION_MACS) * 32 * 32
KEYS = {"name", "kind", "macs", "w_bits", "a_bits", "container", "rank", "max_rank", "bops"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """fp32.onnx (torch.onnx export of the tiny base), and its onnxruntime quantize_dynamic / quantize_static."""
    import onnx
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from transformers import AutoModelForSequenceClassification

    from blora_export.export.onnx_export import export_float

    root = tmp_path_factory.mktemp("audit-graphs")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir("bert")), num_labels=2).eval()
    onnx.save(export_float(model, ["input_ids", "attention_mask", "token_type_ids"]), str(root / "fp32.onnx"))
    quantize_dynamic(str(root / "fp32.onnx"), str(root / "dynamic.onnx"), weight_type=QuantType.QInt8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            ids = [rng.integers(len(SPECIAL), len(SPECIAL) + len(WORDS), (1, 16)) for _ in range(4)]
            self.batches = iter({"input_ids": i.astype(np.int64), "attention_mask": np.ones_like(i, np.int64),
                                 "token_type_ids": np.zeros_like(i, np.int64)} for i in ids)

        def get_next(self):
            return next(self.batches, None)

    with np.errstate(all="ignore"):  # onnxruntime divides by a zero range for constant tensors
        quantize_static(str(root / "fp32.onnx"), str(root / "static.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    return root


def _linear_rows(audit):
    return [r for r in audit["layers"] if r["kind"] == "linear"]


def test_audit_fp32_graph(graphs):
    audit = audit_onnx(graphs / "fp32.onnx", T).to_dict()
    assert all(KEYS <= set(r) for r in audit["layers"])
    assert all((r["w_bits"], r["a_bits"]) == (32, 32) for r in audit["layers"])
    assert sum(r["macs"] for r in _linear_rows(audit)) == LINEAR_MACS
    assert audit["attention_macs"] == ATTENTION_MACS
    whole = audit["totals"]["whole_model"]
    assert whole == {"bops": FP32, "bops_fp32": FP32, "reduction": 0.0}
    assert audit["totals"]["adapted"]["bops_fp32"] == 0 and all(r["rank"] is None for r in audit["layers"])
    names = {r["name"] for r in _linear_rows(audit)}
    assert "bert.encoder.layer.0.attention.self.query" in names and "classifier" in names
    size = audit["size"]
    assert size["fp32_onnx_bytes"] == size["onnx_bytes"] and size["fp32_onnx_bytes_source"].startswith("exact")


def test_audit_quantize_dynamic(graphs):
    audit = audit_onnx(graphs / "dynamic.onnx", T).to_dict()
    linears = _linear_rows(audit)
    assert len(linears) == 14 and all((r["w_bits"], r["a_bits"]) == (8, 8) for r in linears)
    assert all(r["container"] == "int8" for r in linears)
    assert all((r["w_bits"], r["a_bits"]) == (32, 32) for r in audit["layers"] if r["kind"] == "attention")
    whole = audit["totals"]["whole_model"]
    assert whole["bops"] == LINEAR_MACS * 8 * 8 + ATTENTION_MACS * 32 * 32 and whole["bops_fp32"] == FP32
    assert audit["totals"]["w8a8_reference_bops"] == whole["bops"]
    # The fp32 size is estimated as this file with its int8 weight values (word/position tables and the 14
    # MatMulInteger weights, named *_quantized by onnxruntime) stored as float32 instead: +3 bytes per value.
    import onnx

    size = audit["size"]
    assert size["fp32_onnx_bytes_source"].startswith("estimated")
    values = sum(int(np.prod(t.dims)) for t in onnx.load(str(graphs / "dynamic.onnx")).graph.initializer
                 if t.name.endswith("_quantized") and t.data_type in (2, 3))
    assert values > 14 * 32 * 32
    assert size["fp32_onnx_bytes"] == size["onnx_bytes"] + 3 * values
    assert size["onnx_bytes"] < (graphs / "fp32.onnx").stat().st_size


def test_audit_quantize_static(graphs):
    audit = audit_onnx(graphs / "static.onnx", T).to_dict()
    assert len(_linear_rows(audit)) == 14
    assert all((r["w_bits"], r["a_bits"]) == (8, 8) for r in audit["layers"])  # QDQ attention too
    whole = audit["totals"]["whole_model"]
    assert whole["bops"] == (LINEAR_MACS + ATTENTION_MACS) * 8 * 8 and whole["reduction"] == 1 - 64 / 1024
    assert any("Attention products are quantized" in n for n in audit["notes"])


def test_audit_compress_output_matches_its_audit_json():
    out, _ = compressed("bert")
    audit = audit_onnx(out / "model.onnx", T).to_dict()
    written = read_json(out / "audit.json")
    hand = hand_bops_tiny_bert(T)
    assert audit["totals"]["whole_model"]["bops"] == hand["whole"]
    assert audit["totals"]["adapted"]["bops"] == hand["adapted"]
    assert {k: v for k, v in written["totals"].items() if k != "unmerged_adapter_macs"} == audit["totals"]
    by_name = {r["name"]: r for r in written["layers"]}
    for r in audit["layers"]:
        assert {k: r[k] for k in KEYS} == {k: by_name[r["name"]][k] for k in KEYS}
    assert any(r["rank"] is not None for r in audit["layers"])
    assert audit["size"]["fp32_onnx_bytes"] == written["size"]["fp32_onnx_bytes"]
    assert audit["size"]["fp32_onnx_bytes_source"].startswith("measured")
    assert audit["blora_export_graph"] and not audit["notes"]


def test_audit_cli_table_and_json(graphs):
    runner = CliRunner()
    result = runner.invoke(main, ["audit", str(graphs / "dynamic.onnx"), "--seq-len", str(T)])
    assert result.exit_code == 0, result.output
    assert "bert.encoder.layer.1.output.dense" in result.output and "-75.0%" in result.output
    assert "adapted projections: none recorded" in result.output
    result = runner.invoke(main, ["audit", str(graphs / "fp32.onnx"), "--seq-len", str(T), "--json"])
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)
    assert audit["seq_len"] == T and audit["totals"]["whole_model"]["bops"] == FP32
    assert set(audit["size"]) >= {"onnx_bytes", "fp32_onnx_bytes"}


def test_audit_cli_errors_are_one_line(tmp_path, graphs):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    too_long = ["audit", str(graphs / "fp32.onnx"), "--seq-len", "999"]
    for args, fragment in ((["audit", str(tmp_path / "missing.onnx")], "does not exist"),
                           (["audit", str(garbage)], "not a readable ONNX model"),
                           (too_long, "batch 1 x 999")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0], result.output
        assert "Traceback" not in result.output
