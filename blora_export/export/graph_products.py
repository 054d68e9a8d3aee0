"""Every matrix product of any ONNX graph, read from the graph alone: its MACs at batch 1 x T and its operand
widths from types and values.

Works on any ONNX file: this exporter's Q/DQ graphs, onnxruntime quantize_dynamic / quantize_static outputs
(MatMulInteger, DynamicQuantizeMatMul, QGemm, QLinearMatMul, MatMulIntegerToFloat), MatMulNBits, float graphs.

- Shapes come from running the model once in onnxruntime with every product's inputs added as outputs
  (robust to dynamic shapes): dynamic dims are 1 for the first axis and T for the others.
- A product whose second operand is computed from initializers only is a "linear" layer (its weight); one
  whose operands are both activations is "attention".
- Weight width: the integer initializer behind DequantizeLinear / Cast / the integer op, read honestly from its
  values: the smallest of 2/4/8/16 bits holding every code (minus the zero point) - an int8 container of 4-bit
  codes is a 4-bit weight. Float weights are 32 bits. The codes only bound a width from below (4-bit codes
  may be an 8-bit weight that happens to use a narrow range); graph_audit.py reads this exporter's learned
  widths against that bound.
- Activation width: the integer type of the Q/DQ pair (or the integer op's input), narrowed by a Clip in front
  of QuantizeLinear whose bounds give the code range; a Clip -> Div -> Round -> Mul chain is rounding in float
  ops, with its width from the same bounds; any other float input is 32 bits. This width is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bops import FP32
from ..errors import UserError

WIDTHS = (2, 4, 8, 16, 32)
MATMUL_OPERANDS = {  # op type -> (activation input index, second operand index)
    "MatMul": (0, 1), "Gemm": (0, 1), "QGemm": (0, 3), "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1),
    "DynamicQuantizeMatMul": (0, 1), "QLinearMatMul": (0, 3), "MatMulNBits": (0, 1), "FusedMatMul": (0, 1),
}
_ZERO_POINT_INPUT = {"QGemm": 5, "MatMulInteger": 3, "MatMulIntegerToFloat": 5, "DynamicQuantizeMatMul": 3,
                     "QLinearMatMul": 5}
_A_ZERO_POINT_INPUT = {"QGemm": 2, "MatMulInteger": 2, "QLinearMatMul": 2, "MatMulIntegerToFloat": 4}
_PASSTHROUGH = {"Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
INT_BITS = {2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 12: 32, 13: 64, 21: 4, 22: 4, 25: 2, 26: 2}
_INT_SIGNED = {3: True, 5: True, 6: True, 7: True, 22: True, 26: True}


class AuditError(UserError, ValueError):
    """The graph contradicts itself (recorded widths vs. values) or cannot be audited."""


@dataclass
class Operand:
    bits: int  # width used for BOPs
    container: str  # e.g. "int8", "uint8", "int4", "int16", "fp32"
    value_bits: int  # what the graph alone proves (weights: lower bound from values; activations: exact)


@dataclass
class ProductRecord:
    node: str
    op_type: str
    layer: str
    kind: str  # "linear" | "attention"
    macs: int
    weight: Operand
    act: Operand
    meta: dict = field(default_factory=dict)
    constant_input: bool = False  # both operands constant: onnxruntime folds the product at load


def _bits_for_codes(codes: np.ndarray) -> int:
    if codes.size == 0:
        return WIDTHS[0]
    lo, hi = int(codes.min()), int(codes.max())
    for b in WIDTHS[:-1]:
        if (-(2 ** (b - 1)) <= lo and hi <= 2 ** (b - 1) - 1) or (lo >= 0 and hi <= 2**b - 1):
            return b
    return FP32


def _container_name(data_type: int) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(data_type).name if data_type in INT_BITS else "fp32"


class GraphIndex:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._np = numpy_helper
        self.producer = {o: n for n in g.node for o in n.output}
        for n in g.node:  # Constant nodes count as initializers
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.inits[n.output[0]] = n.attribute[0].t
        self.graph_inputs = {i.name for i in g.input} - set(self.inits)
        # Computed from initializers only (a weight, possibly behind DQ / Cast / Mul / Transpose): one pass in
        # the graph's topological node order.
        self.constant = set(self.inits)
        for n in g.node:
            if n.op_type != "Constant" and all(i in self.constant for i in n.input if i):
                self.constant.update(o for o in n.output if o)

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = self._np.to_array(self.inits[name])
        return self._arrays[name]

    def dtype(self, name: str) -> int | None:
        return self.inits[name].data_type if name in self.inits else None

    def is_constant(self, name: str) -> bool:
        return name in self.constant

    def scalar(self, name: str) -> float | None:
        if name in self.inits:
            arr = self.array(name)
            if arr.size == 1:
                return float(arr.reshape(-1)[0])
        return None


def _through(idx: GraphIndex, name: str):
    node = idx.producer.get(name)
    while node is not None and node.op_type in _PASSTHROUGH and name not in idx.inits:
        name = node.input[0]
        node = idx.producer.get(name)
    return name, node


def _clip_bits(idx: GraphIndex, clip_node, scale: float | None) -> int | None:
    """Width implied by Clip(lo, hi) bounds over the step `scale`: the code span round(lo/s)..round(hi/s) of an
    affine or symmetric grid needs the smallest b with hi - lo <= 2^b - 1."""
    if clip_node is None or clip_node.op_type != "Clip" or not scale:
        return None
    lo = idx.scalar(clip_node.input[1]) if len(clip_node.input) > 1 and clip_node.input[1] else None
    hi = idx.scalar(clip_node.input[2]) if len(clip_node.input) > 2 and clip_node.input[2] else None
    if lo is None or hi is None:
        return None
    span = round(hi / scale) - round(lo / scale)
    return next((b for b in WIDTHS[:-1] if span <= 2**b - 1), FP32)


def _weight_operand(idx: GraphIndex, node, operand: int) -> tuple[Operand, str]:
    """(width, root initializer name) of a constant operand."""
    name, prod = _through(idx, node.input[operand])
    if name in idx.inits and idx.dtype(name) in INT_BITS:  # integer op reading the codes directly
        zp_input = _ZERO_POINT_INPUT.get(node.op_type)
        zp = 0
        if zp_input is not None and len(node.input) > zp_input and node.input[zp_input]:
            zp = idx.array(node.input[zp_input]).astype(np.int64)
            zp = zp.reshape(-1) if zp.size > 1 else int(zp.reshape(-1)[0])
        codes = idx.array(name).astype(np.int64)
        codes = codes - (zp if np.isscalar(zp) else _broadcast_zp(codes, zp))
        return _int_operand(idx, name, codes), name
    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return Operand(bits, f"uint{bits} (MatMulNBits)", bits), name
    if prod is not None and prod.op_type == "DequantizeLinear" and prod.input[0] in idx.inits:
        q = prod.input[0]
        codes = idx.array(q).astype(np.int64)
        if len(prod.input) > 2 and prod.input[2]:
            zp = idx.array(prod.input[2]).astype(np.int64)
            axis = next((a.i for a in prod.attribute if a.name == "axis"), 1)
            codes = codes - (zp if zp.size == 1 else np.expand_dims(zp, [d for d in range(codes.ndim) if d != axis]))
        return _int_operand(idx, q, codes), q
    if prod is not None and prod.op_type == "Mul":  # integer -> Cast -> Mul(scale)
        for i in prod.input:
            _, cast = _through(idx, i)
            if cast is not None and cast.op_type == "Cast" and cast.input[0] in idx.inits:
                q = cast.input[0]
                return _int_operand(idx, q, idx.array(q).astype(np.int64)), q
    root = name if name in idx.inits else node.input[operand]
    return Operand(FP32, "fp32", FP32), root


def _broadcast_zp(codes: np.ndarray, zp: np.ndarray) -> np.ndarray:
    # per-column zero points of a (K, N) weight
    return zp.reshape(1, -1) if codes.ndim == 2 and codes.shape[1] == zp.size else zp.reshape(-1, 1)


def _int_operand(idx: GraphIndex, name: str, codes: np.ndarray) -> Operand:
    dt = idx.dtype(name)
    container_bits = INT_BITS[dt]
    value_bits = min(_bits_for_codes(codes), container_bits)
    return Operand(value_bits, _container_name(dt), value_bits)


def _activation_operand(idx: GraphIndex, node, operand: int) -> Operand:
    name, prod = _through(idx, node.input[operand])
    if node.op_type == "DynamicQuantizeMatMul":
        return Operand(8, "uint8 (dynamic)", 8)
    if node.op_type in _A_ZERO_POINT_INPUT:  # integer op: its input is the integer tensor itself
        return _quantized_input(idx, name, prod)
    if prod is not None and prod.op_type == "DequantizeLinear":
        src, q = _through(idx, prod.input[0])
        return _quantized_input(idx, src, q)
    if prod is not None and prod.op_type == "Mul":  # Clip -> Div -> Round -> Mul: rounding in float ops
        rnd = next((idx.producer.get(i) for i in prod.input if idx.producer.get(i) is not None
                    and idx.producer[i].op_type == "Round"), None)
        div = idx.producer.get(rnd.input[0]) if rnd is not None else None
        if div is not None and div.op_type == "Div":
            scale = idx.scalar(div.input[1])
            bits = _clip_bits(idx, idx.producer.get(div.input[0]), scale)
            if bits is not None:
                return Operand(bits, "fp32 (rounded)", bits)
    return Operand(FP32, "fp32", FP32)


def _quantized_input(idx: GraphIndex, name: str, q_node) -> Operand:
    """An activation that passed through QuantizeLinear / DynamicQuantizeLinear (q_node produces `name`)."""
    if q_node is None:
        return Operand(FP32, "fp32", FP32)
    if q_node.op_type == "DynamicQuantizeLinear":
        return Operand(8, "uint8 (dynamic)", 8)
    if q_node.op_type != "QuantizeLinear":
        return Operand(FP32, "fp32", FP32)
    dt = None
    if len(q_node.input) > 2 and q_node.input[2]:
        dt = idx.dtype(q_node.input[2])
    if dt is None:
        dt = next((a.i for a in q_node.attribute if a.name == "output_dtype"), 2) or 2
    container_bits = INT_BITS.get(dt, 8)
    clip_bits = _clip_bits(idx, idx.producer.get(q_node.input[0]), idx.scalar(q_node.input[1]))
    bits = min(container_bits, clip_bits) if clip_bits is not None else container_bits
    return Operand(bits, _container_name(dt), bits)


def _attr(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _macs(node, a_shape, b_shape) -> int:
    if node.op_type in ("Gemm", "QGemm"):
        m, k = (a_shape[1], a_shape[0]) if _attr(node, "transA") else (a_shape[0], a_shape[1])
        n = b_shape[0] if _attr(node, "transB") else b_shape[1]
        return int(m * k * n)
    if node.op_type == "MatMulNBits":
        return int(math.prod(a_shape[:-1]) * a_shape[-1] * _attr(node, "N"))
    if node.op_type == "FusedMatMul":
        a_shape = list(a_shape[:-2]) + list(reversed(a_shape[-2:])) if _attr(node, "transA") else a_shape
        b_shape = list(b_shape[:-2]) + list(reversed(b_shape[-2:])) if _attr(node, "transB") else b_shape
    a_shape, b_shape = list(a_shape), list(b_shape)
    if len(a_shape) == 1:
        a_shape = [1] + a_shape
    if len(b_shape) == 1:
        b_shape = b_shape + [1]
    batch = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    return int(math.prod(batch) * a_shape[-2] * a_shape[-1] * b_shape[-1])


def dummy_feed(model, seq_len: int) -> dict[str, np.ndarray]:
    from onnx import helper

    feed = {}
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims, first = [], True
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (1 if first else seq_len))
            first = False
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        fill = 0 if ("token_type" in inp.name or not np.issubdtype(dtype, np.integer)) else 1
        feed[inp.name] = np.full(dims, fill, dtype=dtype)
    return feed


def _operand_shapes(model, idx: GraphIndex, names: set[str], seq_len: int) -> dict[str, tuple]:
    """Shapes of intermediate tensors from one onnxruntime run at batch 1 x seq_len."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    shapes = {n: tuple(idx.inits[n].dims) for n in names if n in idx.inits}
    wanted = sorted(n for n in names if n not in idx.inits)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:  # contrib ops or partial inference: fall back to producers' types below
        types = {}
    outputs = {o.name for o in probe.graph.output}
    run = [n for n in wanted if n not in idx.graph_inputs]
    for name in run:
        if name not in outputs:
            elem = types.get(name) or _guess_type(idx, name)
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # fatal only: errors come back as exceptions (see runtime.session_options)
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = dummy_feed(model, seq_len)
    results = session.run(run, feed) if run else []
    shapes.update({n: tuple(r.shape) for n, r in zip(run, results, strict=True)})
    shapes.update({n: feed[n].shape for n in wanted if n in idx.graph_inputs})
    return shapes


def _guess_type(idx: GraphIndex, name: str) -> int:
    from onnx import TensorProto

    node = idx.producer.get(name)
    if node is not None and node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2]:
        return idx.dtype(node.input[2]) or TensorProto.UINT8
    if node is not None and node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return TensorProto.UINT8
    return TensorProto.FLOAT


def load_model(model_or_path):
    import onnx

    return onnx.load(str(model_or_path)) if isinstance(model_or_path, str | Path) else model_or_path


def read_products(model, seq_len: int) -> list[ProductRecord]:
    """Every matrix product of `model` in graph order, with the widths the graph alone shows and the node's
    blora.* metadata (empty for graphs of other tools)."""
    from .qdq import metadata

    idx = GraphIndex(model)
    nodes = [n for n in model.graph.node if n.op_type in MATMUL_OPERANDS]
    needed = set()
    for n in nodes:
        a, b = MATMUL_OPERANDS[n.op_type]
        needed.update({n.input[a], n.input[b]})
    shapes = _operand_shapes(model, idx, needed, seq_len)
    products = []
    for n in nodes:
        a, b = MATMUL_OPERANDS[n.op_type]
        macs = _macs(n, shapes[n.input[a]], shapes[n.input[b]])
        if n.op_type == "MatMul" and idx.is_constant(n.input[a]) and not idx.is_constant(n.input[b]):
            a, b = b, a  # the constant on the left is the weight
        meta = metadata(n)
        if idx.is_constant(n.input[b]) or n.op_type in ("MatMulNBits", "DynamicQuantizeMatMul"):
            weight, root = _weight_operand(idx, n, b)
            products.append(ProductRecord(n.name, n.op_type, meta.get("module") or root, "linear", macs, weight,
                                          _activation_operand(idx, n, a), meta, idx.is_constant(n.input[a])))
        else:
            products.append(ProductRecord(n.name, n.op_type, n.name, "attention", macs,
                                          _activation_operand(idx, n, b), _activation_operand(idx, n, a), meta))
    return products
