"""The graph audit on any ONNX file, and the Q/DQ pass failing loudly."""

import copy

import numpy as np
import onnx
import pytest
from export_support import ROOT, base_dir, checkpoint, compressed

from blora_export.base_model import load_base_model
from blora_export.bops import profile_macs
from blora_export.checkpoint import load_checkpoint
from blora_export.export.graph_audit import AuditError, audit_graph
from blora_export.export.merge import build_float_model
from blora_export.export.onnx_export import convert_opset, export_float
from blora_export.export.plan import make_plan
from blora_export.export.qdq import GraphPassError, quantize_graph
from blora_export.targets import encoder_linears


def test_audit_of_an_onnxruntime_quantize_dynamic_model(tmp_path):
    """A graph this exporter did not write: MatMulInteger behind DynamicQuantizeLinear, no metadata."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = load_base_model(str(base_dir("bert")), 2).eval()
    proto = convert_opset(export_float(model, ["input_ids", "attention_mask", "token_type_ids"]), 21)
    onnx.save(proto, str(tmp_path / "fp32.onnx"))
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    seq_len = 16
    profile = profile_macs(model, seq_len, encoder_linears(model), [])
    audit = audit_graph(tmp_path / "int8.onnx", seq_len)
    ops = {r.op_type for r in audit.products if r.kind == "linear"}
    assert ops <= {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert sorted(audit.mac_profile().linears.values()) == sorted(profile.linears.values())
    assert audit.attention_macs == profile.attention
    assert all((w, a) == (8, 8) for w, a in audit.widths().values())
    expected = sum(profile.linears.values()) * 64 + profile.attention * 1024
    assert audit.totals()["whole_model"]["bops"] == expected
    float_audit = audit_graph(tmp_path / "fp32.onnx", seq_len)
    assert float_audit.totals()["whole_model"]["reduction"] == 0.0


def test_widths_come_from_the_graph_without_metadata():
    """Strip the recorded widths: types, values and Clip bounds alone give the same widths (an int8 container
    holding 4-bit codes is a 4-bit weight; a 4-bit activation is read from its Clip range)."""
    out, result = compressed("bert", "blora", "speed")
    model = onnx.load(str(out / "model.onnx"))
    for n in model.graph.node:
        del n.metadata_props[:]
    audit = audit_graph(model, 32)
    records = [r for r in audit.products if r.kind == "linear"]
    for lp in result.plan.linears:  # without metadata a layer is named after its weight initializer
        rec = next(r for r in records if r.layer.startswith(lp.name + "."))
        assert rec.act.bits == lp.act.bits, lp.name
        assert rec.weight.bits == lp.weight.bits, lp.name  # learned codes span their full range here
        if lp.weight.container == "int8" and lp.weight.bits == 4:
            assert rec.weight.container == "int8"


def _set_meta(model, module, key, value):
    for n in model.graph.node:
        for p in n.metadata_props:
            if p.key == "blora.module" and p.value == module:
                for q in n.metadata_props:
                    if q.key == key:
                        q.value = value


def test_recorded_widths_that_contradict_the_graph_are_errors():
    out, result = compressed("bert", "blora", "speed")
    model = onnx.load(str(out / "model.onnx"))
    w8 = next(lp.name for lp in result.plan.linears if lp.weight.bits == 8 and lp.weight.delivery == "dq")
    bad = copy.deepcopy(model)
    _set_meta(bad, w8, "blora.w_bits", "4")  # its codes need 8 bits
    with pytest.raises(AuditError, match="recorded weight width 4"):
        audit_graph(bad, 32)
    bad = copy.deepcopy(model)
    _set_meta(bad, w8, "blora.a_bits", "16")  # the graph quantizes it to 8 bits
    with pytest.raises(AuditError, match="recorded activation width 16"):
        audit_graph(bad, 32)


def test_a_planned_weight_missing_from_the_graph_fails_loudly():
    model, meta = load_checkpoint(checkpoint("bert"))
    plan = make_plan(model, meta.quantized, meta.adapted, meta.profile, "blora")
    merged = build_float_model(model, plan)
    proto = convert_opset(export_float(merged.model, ["input_ids", "attention_mask", "token_type_ids"]), 25)
    name = meta.quantized[3]
    merged.linears[name].values = merged.linears[name].values + np.float32(1e-3)  # not what was exported
    with pytest.raises(GraphPassError, match=f"planned weight of {name}"):
        quantize_graph(proto, plan, merged)
    assert ROOT.exists()
