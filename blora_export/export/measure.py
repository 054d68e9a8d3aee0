"""What onnxruntime actually does with an exported model on this machine: kernels chosen, batch-1 latency."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from .. import runtime
from .artifacts import RuntimeKernels
from .graph_audit import GraphAudit
from .graph_products import dummy_feed
from .plan import KERNEL_INTEGER, CompressionPlan

INTEGER_OPS = ("QGemm", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul")


def runtime_kernels(model_path: Path, plan: CompressionPlan, graph: GraphAudit) -> RuntimeKernels:
    """Which matrix-product ops onnxruntime's optimized graph holds (loader options)."""
    import onnx
    import onnxruntime as ort

    integer_layers = {lp.name for lp in plan.linears if lp.kernel == KERNEL_INTEGER}
    # A product on a constant input (DeBERTa's relative-position projections) is folded at load: not a kernel.
    expected = sum(1 for name, recs in graph.linear_layers.items() if name in integer_layers
                   for r in recs if not r.constant_input)
    with tempfile.TemporaryDirectory() as tmp:
        so = runtime.session_options()
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    matmul_ops = {k: v for k, v in sorted(ops.items()) if "MatMul" in k or "Gemm" in k}
    return RuntimeKernels(expected, sum(ops.get(k, 0) for k in INTEGER_OPS), matmul_ops)


def latency(model: bytes | Path, seq_len: int, runs: int) -> float:
    """Median batch-1 latency in ms with the loader's session options (for audit.md only)."""
    import onnx
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(src, runtime.session_options(), providers=["CPUExecutionProvider"])
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(src)
    feed = dummy_feed(proto, seq_len)
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
