"""The integer-product pass: each Q/DQ Linear of the quantized graph -> one MatMulIntegerToFloat with its bias.

onnxruntime turns `QuantizeLinear -> DequantizeLinear -> MatMul(DequantizeLinear(W)) -> Add(bias)` into
`QuantizeLinear -> MatMulIntegerToFloat -> Add`: the bias stays a separate Add, so the BiasGelu and
SkipLayerNormalization fusions that follow quantize_dynamic's graphs do not apply, and at 2 threads the many small
Adds cost more than they do at 1 (docs/ONNX.md). Its own fusion that folds the bias (MatMulInteger -> Cast -> Mul
-> Add) needs the activation scale to be computed at run time, so a static scale never reaches it. This pass
writes the fused node itself, with exactly the inputs onnxruntime's Q/DQ fusion gives it plus the bias: the
integer products, scales and zero points are unchanged, only the bias is added inside the kernel.

MatMulIntegerToFloat is an onnxruntime operator (domain com.microsoft), not standard ONNX; `compress --portable`
skips this pass and keeps the standard Q/DQ graph.
"""

from __future__ import annotations

from collections import defaultdict

from .graph_products import GraphIndex
from .qdq import metadata, set_metadata

MS_DOMAIN = "com.microsoft"
FUSED_OP = "MatMulIntegerToFloat"


def _single_consumer(consumers: dict, name: str):
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 else None


def _per_column(weight_dq, inits: dict) -> bool:
    """The kernel's weight scale is one number or one per output column: a DequantizeLinear on a (K, N) weight with
    a scalar scale, or a length-N scale along axis 1 (not blocked)."""
    attrs = {a.name: a.i for a in weight_dq.attribute}
    scale = inits.get(weight_dq.input[1])
    if scale is None or "block_size" in attrs:
        return False
    if not scale.dims or list(scale.dims) == [1]:
        return True
    columns = inits[weight_dq.input[0]].dims[1]
    return list(scale.dims) == [columns] and attrs.get("axis", 1) in (1, -1)


def fuse_integer_products(proto) -> int:
    """Rewrite, in place, every Linear whose weight and input (uint8) are both Q/DQ in 8-bit containers and whose output
    goes only to an Add with a 1-D constant bias. Returns how many were fused.

    A product on a constant input (DeBERTa's relative-position projections) keeps its Q/DQ form: onnxruntime
    folds that at load, but does not fold the fused node."""
    from onnx import TensorProto, helper

    g = proto.graph
    constant = GraphIndex(proto).is_constant
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for x in n.input:
            consumers[x].append(n)

    def dq_of(name: str, weight: bool):
        """The DequantizeLinear producing `name`: of an integer initializer (weight) or of a QuantizeLinear."""
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            return None
        source = dq.input[0]
        if weight:
            return dq if source in inits and len(inits[source].dims) == 2 and _per_column(dq, inits) else None
        q = producer.get(source)
        return dq if q is not None and q.op_type == "QuantizeLinear" else None

    replaced: dict[int, object] = {}  # id(old MatMul) -> fused node
    dropped: set[int] = set()
    for node in g.node:
        if node.op_type != "MatMul" or "module" not in metadata(node) or constant(node.input[0]):
            continue
        act_dq, w_dq = dq_of(node.input[0], weight=False), dq_of(node.input[1], weight=True)
        add = _single_consumer(consumers, node.output[0])
        if act_dq is None or w_dq is None or add is None or add.op_type != "Add":
            continue
        # onnxruntime's CPU kernel takes a uint8 activation (int8 or uint8 weight); an int8 (symmetric) activation
        # has no fast x86 kernel there, so that Linear stays Q/DQ like onnxruntime itself would leave it.
        if inits[act_dq.input[2]].data_type != TensorProto.UINT8 or inits[w_dq.input[0]].data_type not in (
                TensorProto.INT8, TensorProto.UINT8):
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in inits or len(inits[bias].dims) != 1 or inits[bias].data_type != 1:
            continue
        if inits[bias].dims[0] != inits[w_dq.input[0]].dims[1]:
            continue
        # x_q, W_q, x_scale, W_scale, x_zero_point, W_zero_point, bias: the kernel's input order
        fused = helper.make_node(FUSED_OP, [act_dq.input[0], w_dq.input[0], act_dq.input[1], w_dq.input[1],
                                            act_dq.input[2], w_dq.input[2], bias], [add.output[0]],
                                 node.name + "_integer", domain=MS_DOMAIN)
        set_metadata(fused, metadata(node))
        replaced[id(node)] = fused
        dropped.add(id(add))
        for dq in (act_dq, w_dq):
            consumers[dq.output[0]] = [c for c in consumers[dq.output[0]] if c is not node]
    if not replaced:
        return 0
    unused = {id(n) for n in g.node if n.op_type == "DequantizeLinear" and not consumers[n.output[0]]}
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in dropped and id(n) not in unused]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replaced)
