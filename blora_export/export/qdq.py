"""The Q/DQ graph pass: the float graph of the merged model -> the quantized graph, driven by the plan.

Weights are found by their exact snapped values (the float export holds codes * scale bit for bit), checked
against the node's module scope when several candidates exist; a planned weight that cannot be found is an
error. Each matched MatMul/Gemm is tagged with metadata (blora.module, blora.w_bits, blora.a_bits, ...) that the
graph audit reads back and checks against the integer values and types in the graph.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

from ..ste import FLOAT_BITS
from .merge import Merged
from .onnx_export import ExportError
from .plan import CompressionPlan, EmbeddingPlan, LinearPlan

META_PREFIX = "blora."


class GraphPassError(ExportError):
    """The graph does not hold what the plan expects (a weight not found, an unsupported consumer)."""


def _np_container(container: str):
    import ml_dtypes

    table = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
             "int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int2": ml_dtypes.int2, "uint2": ml_dtypes.uint2}
    return table[container]


def integer_initializer(codes: np.ndarray, container: str, name: str):
    """An integer initializer; int4/int2 are packed (2 or 4 values per byte) by numpy_helper.from_array."""
    from onnx import numpy_helper

    return numpy_helper.from_array(codes.astype(_np_container(container)), name)


def _float_initializer(values, name: str, shape: tuple[int, ...] | None = None):
    from onnx import numpy_helper

    arr = np.asarray(values, dtype=np.float32)
    return numpy_helper.from_array(arr.reshape(shape) if shape is not None else arr, name)


def _key(arr: np.ndarray) -> tuple:
    return arr.shape, hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def _scope(node_name: str) -> str:
    """'/bert/encoder/layer.0/attention/self/query/MatMul' -> 'bert.encoder.layer.0.attention.self.query'."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def set_metadata(node, entries: dict) -> None:
    existing = {p.key for p in node.metadata_props}
    for key, value in entries.items():
        if value is None or META_PREFIX + key in existing:
            continue
        prop = node.metadata_props.add()
        prop.key, prop.value = META_PREFIX + key, str(value)


def metadata(node) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in node.metadata_props if p.key.startswith(META_PREFIX)}


class _Graph:
    """Indexes over one GraphProto: initializers (by name and by value), consumers, and pending insertions."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self._inline_identities()
        self.inits = {t.name: t for t in graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}
        self.by_value: dict[tuple, list[str]] = defaultdict(list)
        for t in graph.initializer:
            if t.data_type == 1 and len(t.dims) == 2:  # float matrices: weights and tables
                arr = numpy_helper.to_array(t)
                self.arrays[t.name] = arr
                self.by_value[_key(arr)].append(t.name)
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for i, x in enumerate(n.input):
                self.consumers[x].append((n, i))
        self.new_inits: list = []
        self.prepend: list = []
        self.before: dict[int, list] = defaultdict(list)
        self.after: dict[int, list] = defaultdict(list)

    def _inline_identities(self) -> None:
        """torch.onnx shares equal constants through Identity nodes; use the initializer directly."""
        g = self.graph
        inits = {t.name for t in g.initializer}
        outputs = {o.name for o in g.output}
        alias = {}
        keep = []
        for n in g.node:
            if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
                alias[n.output[0]] = n.input[0]
            else:
                keep.append(n)
        if not alias:
            return
        for n in keep:
            for i, x in enumerate(n.input):
                n.input[i] = alias.get(x, x)
        del g.node[:]
        g.node.extend(keep)

    def find(self, values: np.ndarray) -> list[str]:
        names = self.by_value.get(_key(values), [])
        return [n for n in names if np.array_equal(self.arrays[n], values)]

    def add_init(self, tensor) -> str:
        self.new_inits.append(tensor)
        return tensor.name

    def finish(self) -> None:
        """Insert the new nodes (weights first, activation chains right before their consumer), drop dead tensors."""
        g = self.graph
        nodes = list(self.prepend)
        for n in g.node:
            nodes.extend(self.before.get(id(n), []))
            nodes.append(n)
            nodes.extend(self.after.get(id(n), []))
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(self.new_inits)
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        alive = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(alive)


def _sites(g: _Graph, name: str, weight: np.ndarray) -> list[tuple]:
    """(node, weight input index, layout) for every MatMul/Gemm that uses this Linear's weight.

    layout "kn": the graph holds W^T (MatMul, Gemm transB=0); "nk": W itself (Gemm transB=1).
    """
    found = []
    for layout, values in (("kn", weight.T), ("nk", weight)):
        for name in g.find(np.ascontiguousarray(values)):
            for node, idx in g.consumers.get(name, []):
                if node.op_type == "MatMul" and idx == 1 and layout == "kn":
                    found.append((node, idx, layout))
                elif node.op_type == "Gemm" and idx == 1:
                    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
                    if trans_a:
                        raise GraphPassError(f"{name}: Gemm with transA=1 is not supported")
                    if (layout == "nk") == bool(trans_b):
                        found.append((node, idx, layout))
    return found


def _claim_sites(g: _Graph, plan: CompressionPlan, merged: Merged) -> dict[str, list[tuple]]:
    sites = {lp.name: _sites(g, lp.name, merged.linears[lp.name].values) for lp in plan.linears}
    owners: dict[int, list[str]] = defaultdict(list)
    nodes = {}
    for name, found in sites.items():
        for node, _, _ in found:
            owners[id(node)].append(name)
            nodes[id(node)] = node
    for key, names in owners.items():
        if len(names) == 1:
            continue
        # Modules with equal weights: the node's module scope (torch names repeated calls `name_1`) decides.
        scope = _scope(nodes[key].name)
        mine = [n for n in names if re.fullmatch(re.escape(n) + r"(_\d+)?", scope)]
        if len(mine) != 1:
            raise GraphPassError(f"modules {names[:2]} have equal weights and node {nodes[key].name!r} does not "
                                 "say which one it belongs to")
        for n in names:
            if n != mine[0]:
                sites[n] = [s for s in sites[n] if id(s[0]) != key]
    for name, found in sites.items():
        if not found:
            raise GraphPassError(f"planned weight of {name} {merged.linears[name].values.shape} was not found "
                                 "in the exported graph")
    return sites


def _weight_tensor(g: _Graph, lp: LinearPlan, merged: Merged, layout: str) -> str:
    """Create the weight's representation once per layout; returns the float tensor name the MatMul reads."""
    from onnx import TensorProto, helper

    wp = lp.weight
    tag = "" if layout == "kn" else "_nk"
    base = f"{lp.name}.weight{tag}"
    mt = merged.linears[lp.name]
    if wp.delivery == "float":
        return g.add_init(_float_initializer(mt.values.T if layout == "kn" else mt.values, base))
    codes = mt.codes.T if layout == "kn" else mt.codes
    per_channel = len(wp.scale) > 1
    axis = 1 if layout == "kn" else 0
    q = g.add_init(integer_initializer(codes + wp.zero_point, wp.container, base + "_quant"))
    if wp.delivery == "dq":
        scale = g.add_init(_float_initializer(wp.scale if per_channel else wp.scale[0], base + "_scale"))
        zp_values = np.full(len(wp.scale), wp.zero_point) if per_channel else np.array(wp.zero_point)
        zp = g.add_init(integer_initializer(zp_values, wp.container, base + "_zero_point"))
        attrs = {"axis": axis} if per_channel else {}
        g.prepend.append(helper.make_node("DequantizeLinear", [q, scale, zp], [base + "_dq"], base + "_dq",
                                          **attrs))
    else:  # "cast": integer -> Cast(float) -> Mul(scale), constant-folded by onnxruntime at load
        shape = ((1, len(wp.scale)) if layout == "kn" else (len(wp.scale), 1)) if per_channel else ()
        scale = g.add_init(_float_initializer(wp.scale if per_channel else wp.scale[0], base + "_scale", shape))
        g.prepend.append(helper.make_node("Cast", [q], [base + "_cast"], base + "_cast", to=TensorProto.FLOAT))
        g.prepend.append(helper.make_node("Mul", [base + "_cast", scale], [base + "_dq"], base + "_mul"))
    return base + "_dq"


def _activation_chain(g: _Graph, lp: LinearPlan, node, input_index: int, call: int, shared: dict) -> None:
    """The activation quantizer in front of one call's input, reproducing training's quantize function.

    qdq:   [Clip] -> QuantizeLinear -> DequantizeLinear (8-bit container, the trained zero point)
    round: Clip -> Div -> Round -> Mul (16 bits, float ops)
    The Clip bounds are the ends of training's code range, (qmin - z) s and (qmax - z) s: it is left out where
    QuantizeLinear's own saturation is that range (an 8-bit affine grid).
    """
    from onnx import helper

    ap = lp.act
    base = f"{lp.name}.input"
    if not shared:
        qmin, qmax = ap.code_range
        scale = np.float32(ap.scale)
        shared["scale"] = g.add_init(_float_initializer(scale, base + "_scale"))
        if ap.clips:
            shared["low"] = g.add_init(_float_initializer(np.float32(qmin - ap.zero_point) * scale, base + "_low"))
            shared["high"] = g.add_init(_float_initializer(np.float32(qmax - ap.zero_point) * scale,
                                                           base + "_high"))
        if ap.qdq:
            shared["zp"] = g.add_init(integer_initializer(np.array(ap.zero_point), ap.container,
                                                          base + "_zero_point"))
    suffix = "" if call == 0 else f"_{call}"
    x = node.input[input_index]
    nodes = []
    if ap.clips:
        clip = f"{base}_clip{suffix}"
        nodes.append(helper.make_node("Clip", [x, shared["low"], shared["high"]], [clip], clip))
        x = clip
    if ap.qdq:
        q, out = f"{base}_q{suffix}", f"{base}_dq{suffix}"
        nodes.append(helper.make_node("QuantizeLinear", [x, shared["scale"], shared["zp"]], [q], q))
        nodes.append(helper.make_node("DequantizeLinear", [q, shared["scale"], shared["zp"]], [out], out))
    else:
        div, rnd, out = f"{base}_div{suffix}", f"{base}_round{suffix}", f"{base}_rounded{suffix}"
        nodes.append(helper.make_node("Div", [x, shared["scale"]], [div], div))
        nodes.append(helper.make_node("Round", [div], [rnd], rnd))
        nodes.append(helper.make_node("Mul", [rnd, shared["scale"]], [out], out))
    g.before[id(node)].extend(nodes)
    node.input[input_index] = out


def _linear_metadata(lp: LinearPlan) -> dict:
    return {"module": lp.name, "role": lp.role, "w_bits": lp.weight.bits, "a_bits": lp.act.bits,
            "w_container": lp.weight.container, "a_container": lp.act.container,
            "rank": lp.rank if lp.max_rank else None, "max_rank": lp.max_rank or None,
            "adapted": int(lp.adapted)}


def _branch(g: _Graph, lp: LinearPlan, merged: Merged, raw_input: str, quantized_input: str) -> None:
    """An unmerged adapter's two fp32 products: x A^T reads the same quantized input as the main product (as in
    training), and both carry their layer names for the audit (role "adapter")."""
    a, scaled_b = merged.branches[lp.name]
    for part, weight in (("lora_A", a), ("lora_B", scaled_b)):
        found = _sites(g, f"{lp.name}.{part}", weight)
        if not found:
            raise GraphPassError(f"the {part} product of {lp.name}'s unmerged adapter was not found in the graph")
        for node, _, _ in found:
            if part == "lora_A" and node.input[0] == raw_input:
                node.input[0] = quantized_input
            set_metadata(node, {"module": f"{lp.name}.{part}", "role": "adapter", "w_bits": FLOAT_BITS,
                                "a_bits": lp.act.bits if part == "lora_A" else FLOAT_BITS, "rank": lp.rank})


def _embedding(g: _Graph, ep: EmbeddingPlan, merged: Merged) -> None:
    """Integer rows at the trained width; the Gather picks integer rows, which are then dequantized:
    Gather(int8 table, ids) -> Cast(float) -> Mul(Gather(row scales, ids)). Exact (q * s per element, like
    DequantizeLinear), int8 in memory, and ~50x cheaper per inference than DequantizeLinear on the whole table
    before the Gather (measured on a 30522 x 384 table: 4.7 ms vs 0.08 ms; onnxruntime does not fold DQ)."""
    from onnx import TensorProto, helper

    mt = merged.embeddings[ep.name]
    gathers = [(n, i) for name in g.find(mt.values) for n, i in g.consumers.get(name, [])
               if n.op_type == "Gather" and i == 0]
    if not gathers:
        raise GraphPassError(f"planned embedding table {ep.name} {mt.values.shape} was not found in the graph")
    meta = {"embedding": ep.name, "w_bits": ep.bits, "w_container": ep.container}
    if ep.container == "fp32":
        for node, _ in gathers:
            set_metadata(node, meta)
        return
    base = f"{ep.name}.weight"
    table = g.add_init(integer_initializer(mt.codes, ep.container, base + "_quant"))
    if ep.container != "int8":  # Gather has no int4 kernel: widen once to int8 (constant-folded at load)
        g.prepend.append(helper.make_node("Cast", [table], [base + "_int8"], base + "_int8", to=TensorProto.INT8))
        table = base + "_int8"
    scale = g.add_init(_float_initializer(ep.scale, base + "_scale", (ep.rows, 1)))
    for k, (node, _) in enumerate(sorted(gathers, key=lambda x: x[0].name)):
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            raise GraphPassError(f"embedding {ep.name} is gathered along an axis other than 0")
        sfx = "" if k == 0 else f"_{k}"
        ids, out = node.input[1], node.output[0]
        rows, row_scale, rows_float = f"{base}_rows{sfx}", f"{base}_row_scale{sfx}", f"{base}_rows_float{sfx}"
        node.input[0], node.output[0] = table, rows
        g.after[id(node)].extend([
            helper.make_node("Gather", [scale, ids], [row_scale], row_scale),
            helper.make_node("Cast", [rows], [rows_float], rows_float, to=TensorProto.FLOAT),
            helper.make_node("Mul", [rows_float, row_scale], [out], f"{base}_dequantize{sfx}"),
        ])
        set_metadata(node, meta)


def quantize_graph(proto, plan: CompressionPlan, merged: Merged):
    """Return a copy of the float ModelProto with every planned weight, activation and table quantized."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = _Graph(out.graph)
    sites = _claim_sites(g, plan, merged)
    for lp in plan.linears:
        weights: dict[str, str] = {}
        shared: dict[str, str] = {}
        for call, (node, idx, layout) in enumerate(sorted(sites[lp.name], key=lambda s: s[0].name)):
            if layout not in weights:
                weights[layout] = _weight_tensor(g, lp, merged, layout)
            node.input[idx] = weights[layout]
            raw_input = node.input[0]
            if lp.act.mode != "float":
                _activation_chain(g, lp, node, 0, call, shared)
            if lp.unmerged:
                _branch(g, lp, merged, raw_input, node.input[0])
            set_metadata(node, _linear_metadata(lp))
    for ep in plan.embeddings:
        _embedding(g, ep, merged)
    g.finish()
    return out
