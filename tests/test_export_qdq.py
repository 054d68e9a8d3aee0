"""The Q/DQ pass on probe graphs: activation quantizers equal training's at the range ends, and full-range 8-bit
weights stay exact on onnxruntime's integer kernel with default session options (the AVX2 u8s8 saturation trap)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_support import checkpoint, compressed
from onnx import TensorProto, helper, numpy_helper

from blora_export.config import QuantizerSpec
from blora_export.export.merge import Merged, MergedTensor
from blora_export.export.plan import (
    KERNEL_FLOAT,
    KERNEL_INTEGER,
    ActivationPlan,
    CompressionPlan,
    LinearPlan,
    WeightPlan,
    _activation_plan,
    _weight_representation,
    make_plan,
)
from blora_export.export.qdq import quantize_graph
from blora_export.quantizer import BayesianBitsQuantizer

D = 16


def _probe(weight: np.ndarray, wplan: WeightPlan, aplan: ActivationPlan, kernel: str, opset: int = 21):
    """A float graph y = x @ W^T (as torch.onnx exports a Linear), quantized by the real pass."""
    d_out, d_in = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w_t"], ["y"], "/probe/MatMul")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", d_out])],
                              [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w_t")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    lp = LinearPlan("probe", "quantized", d_in, d_out, False, False, 0, (), 0.0, wplan, aplan, kernel, 0)
    plan = CompressionPlan("speed", opset, 1, "blora", (lp,), (), 0)
    codes = None
    if wplan.bits < 32:
        codes = np.rint(weight / np.asarray(wplan.scale, np.float32).reshape(-1, 1)).astype(np.int32)
    merged = Merged(None, {"probe": MergedTensor(weight, codes)})
    out = quantize_graph(proto, plan, merged)
    onnx.checker.check_model(out, full_check=True)
    return out


def _run(model, x, options=None):
    session = ort.InferenceSession(model.SerializeToString(), options or ort.SessionOptions(),
                                   providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _activation_quantizer(bits: int, signed: bool, beta: float) -> BayesianBitsQuantizer:
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(bits,), init_bits=bits, learn=False))
    q.beta.data.fill_(beta)
    q.signed.fill_(signed)
    return q.eval()


@pytest.mark.parametrize("bits,signed", [(8, True), (4, True), (8, False), (4, False), (16, True)])
def test_activation_chain_equals_the_training_quantizer(bits, signed):
    """Inside, at and beyond the learned range, and on exact rounding ties: Clip -> Q -> DQ (4/8 bits) and
    Clip -> Div -> Round -> Mul (16 bits) give training's values bit for bit. Without the Clip, int8
    QuantizeLinear would map x <= -beta to -128 where training gives -127."""
    quantizer = _activation_quantizer(bits, signed, beta=1.7)
    aplan = _activation_plan(quantizer)
    assert aplan.mode == ("round" if bits == 16 else "qdq")
    s = aplan.scale
    rng = np.random.default_rng(bits + signed)
    qmin, qmax = aplan.code_range
    ties = (np.arange(qmin - 3, qmax + 3, max(1, (qmax - qmin) // 200)) + 0.5) * s
    x = np.concatenate([ties, rng.normal(0, 1.5, 4000), [-1.7, 1.7, -5.0, 5.0, -1.7001, 0.0]]).astype(np.float32)
    x = np.resize(x, (len(x) // D + 1) * D).reshape(-1, D)
    model = _probe(np.eye(D, dtype=np.float32), WeightPlan(32, True, (), (), "fp32", 0, "float"), aplan,
                   KERNEL_FLOAT)
    expected = quantizer(torch.from_numpy(x)).detach().numpy()
    got = _run(model, x)
    assert np.array_equal(got, expected)
    assert (np.abs(x) > 1.7).any() and (x < 0).any()  # non-vacuous: clipped values on both sides


def test_full_range_8bit_weights_are_exact_on_the_integer_kernel_with_default_options(tmp_path):
    """Worst case for the AVX2 (no VNNI) u8s8 kernel: |q_w| = 127 and activation codes of the same sign, so
    pairs of products overflow int16. The plan stores signed 8-bit weights as uint8 + 128 (u8u8 kernel)."""
    container, zero_point, delivery, kernel = _weight_representation(8, True, True, "speed", 21)
    assert (container, zero_point, delivery, kernel) == ("uint8", 128, "dq", KERNEL_INTEGER)
    rng = np.random.default_rng(0)
    codes = rng.choice([-127, 127], size=(D, 64)).astype(np.int32)
    scale = (rng.random(D).astype(np.float32) + 0.5) * 1e-2
    weight = codes.astype(np.float32) * scale.reshape(-1, 1)
    wplan = WeightPlan(8, True, tuple(float(v) for v in scale), tuple(float(v) for v in 127.5 * scale), container,
                       zero_point, delivery)
    quantizer = _activation_quantizer(8, True, beta=1.0)
    aplan = _activation_plan(quantizer)
    model = _probe(weight, wplan, aplan, kernel)
    x_codes = np.sign(codes[:1].astype(np.float32)).repeat(8, 0) * 127  # aligned with the first row's signs
    x = (x_codes * np.float32(aplan.scale)).astype(np.float32)
    exact = (x_codes.astype(np.float64) * aplan.scale) @ (codes.astype(np.float64) * scale.reshape(-1, 1)).T
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    got = _run(model, x, so)
    assert "MatMulIntegerToFloat" in {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert np.abs(got - exact).max() <= 1e-5 * np.abs(exact).max()


def test_exported_8bit_layers_use_the_full_code_range():
    """The real checkpoints' 8-bit weights do reach |q| > 63, where int8 weights would saturate on AVX2."""
    from blora_export.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint("bert"))
    plan = make_plan(model, meta.quantized, meta.adapted, meta.profile, "blora")
    out, _ = compressed("bert", "blora", "speed")
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    eight = [lp for lp in plan.linears if lp.weight.container == "uint8"]
    assert eight
    for lp in eight:
        codes = numpy_helper.to_array(inits[f"{lp.name}.weight_quant"]).astype(np.int32) - 128
        assert np.abs(codes).max() > 63 and np.abs(codes).max() <= 127
