"""The integer-product pass on a hand-made Linear: what it fuses, what it must leave alone, and that onnxruntime
computes the same logits either way."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blora_export.export.fuse import FUSED_OP, fuse_integer_products
from blora_export.export.qdq import set_metadata

K, N = 16, 8


def _linear(weight_scale: np.ndarray, axis: int | None = 1, block_size: int | None = None) -> onnx.ModelProto:
    """x -> Q(uint8) -> DQ -> MatMul(DQ(int8 W)) -> Add(bias): the Q/DQ form compress writes for one Linear."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (K, N), dtype=np.int8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(weight_scale.astype(np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(weight_scale.shape, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(0.05, np.float32), "x_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(rng.normal(size=N).astype(np.float32), "bias")]
    attrs = {} if axis is None else {"axis": axis}
    if block_size is not None:
        attrs["block_size"] = block_size
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"], "q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"], "x_dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], "w_dq", **attrs),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["y0"], "matmul"),
             helper.make_node("Add", ["y0", "bias"], ["y"], "add")]
    set_metadata(nodes[3], {"module": "layer.dense"})
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("scale", [np.array(0.01), np.linspace(0.005, 0.02, N)], ids=["per-tensor", "per-column"])
def test_a_linear_becomes_one_node_with_the_same_output(scale):
    model = _linear(scale)
    x = np.random.default_rng(1).normal(size=(2, K)).astype(np.float32)
    before = _run(model, x)
    assert fuse_integer_products(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", FUSED_OP]
    after = _run(model, x)
    assert np.abs(before).max() > 0.1
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["per-row scale", "blocked scale"])
def test_weight_scales_the_kernel_cannot_take_stay_q_dq(case):
    """MatMulIntegerToFloat takes one weight scale or one per output column: a scale along the input axis or a
    blocked scale keeps the standard form."""
    model = _linear(np.linspace(0.005, 0.02, K), axis=0) if case == "per-row scale" else \
        _linear(np.full((K // 4, N), 0.01), axis=0, block_size=4)
    ops = [n.op_type for n in model.graph.node]
    assert fuse_integer_products(model) == 0
    assert [n.op_type for n in model.graph.node] == ops
