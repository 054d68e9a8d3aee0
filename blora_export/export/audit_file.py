"""`blora-export audit MODEL.onnx`: the BOP audit of any ONNX encoder, in compress's audit.json schema.

Works on this exporter's outputs (widths and ranks recorded as node metadata, checked against the graph) and on
graphs from other tools: fp32 torch.onnx exports, onnxruntime quantize_dynamic (MatMulInteger) and
quantize_static (QDQ) outputs. Those carry no ranks and no list of adapted projections, so `rank`/`max_rank`
are null and the "adapted" totals are empty (0 BOPs).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import file_problem
from ..typed_json import JsonShapeError
from .artifacts import AUDIT_FILE, Audit, Size, build_audit
from .foreign_graph import foreign_notes, name_layers_by_module
from .graph_audit import audit_graph
from .graph_products import INT_BITS, MATMUL_OPERANDS, AuditError

# Integer tensors a weight (or embedding table) is stored in, as opposed to zero points and shape constants.
_STORED_VALUE_INPUTS = {"DequantizeLinear": (0,), "Cast": (0,), "Gather": (0,)}


def load_onnx(path: str | Path):
    import onnx

    path = Path(path)
    if problem := file_problem(path):
        raise AuditError(f"{path} {problem}; pass an .onnx file (e.g. OUT/model.onnx of compress)")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, external data missing, ...
        raise AuditError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:  # an empty file parses as an empty ModelProto
        raise AuditError(f"{path} is not a readable ONNX model (it holds no graph); pass an .onnx file")
    return model


def _stored_integer_values(model) -> list:
    """Integer initializers holding weight values: what an fp32 graph would store as float32."""
    inits = {t.name: t for t in model.graph.initializer}
    names = set()
    for n in model.graph.node:
        positions = _STORED_VALUE_INPUTS.get(n.op_type, ())
        if n.op_type in MATMUL_OPERANDS:
            positions = (MATMUL_OPERANDS[n.op_type][1],)
        names.update(n.input[i] for i in positions if i < len(n.input) and n.input[i] in inits)
    return [inits[name] for name in sorted(names) if inits[name].data_type in INT_BITS
            and inits[name].data_type not in (7, 13)]  # int64/uint64: ids and shapes


def _measured_fp32_bytes(path: Path, onnx_bytes: int) -> int | None:
    """fp32_onnx_bytes from the audit.json compress wrote next to this very file (same size), else None.
    A sibling that is not a valid audit (Audit.from_dict refuses negative or zero sizes), or belongs to another
    file, is ignored: the size is then estimated from the graph."""
    sibling = path.parent / AUDIT_FILE
    if not sibling.is_file():
        return None
    try:
        size = Audit.read(sibling).size
    except JsonShapeError:
        return None
    return size.fp32_onnx_bytes if size.onnx_bytes == onnx_bytes and size.fp32_onnx_bytes > 0 else None


def size_info(model, path: Path) -> Size:
    """onnx_bytes, and fp32_onnx_bytes: measured by compress (its audit.json next to the file), exact (the
    file is an fp32 graph), or estimated: this file with every stored integer weight value (what feeds a
    DequantizeLinear, Cast, Gather or an integer product's weight input) taken as 4 bytes. The estimate keeps this
    graph's own structure (quantization nodes, names), which a tiny model's fp32 export would not have."""
    import math

    onnx_bytes = path.stat().st_size
    fp32 = _measured_fp32_bytes(path, onnx_bytes)
    if fp32 is not None:
        return Size(onnx_bytes, fp32, round(onnx_bytes / fp32, 4), "measured (audit.json written by compress)")
    stored = _stored_integer_values(model)
    if not stored:
        return Size(onnx_bytes, onnx_bytes, 1.0, "exact (no integer weights: the file is its own fp32 graph)")
    extra = 0
    for t in stored:
        n = math.prod(t.dims)
        held = len(t.raw_data) if t.raw_data else math.ceil(n * INT_BITS[t.data_type] / 8)
        extra += 4 * n - held
    fp32 = onnx_bytes + extra
    return Size(onnx_bytes, fp32, round(onnx_bytes / fp32, 4),
                "estimated (this file with its integer weight values stored as float32)")


def audit_onnx(path: str | Path, seq_len: int = 128) -> Audit:
    """The audit of one ONNX file (audit.json's schema, with its source instead of compress's sections)."""
    if seq_len < 1:
        raise AuditError(f"--seq-len must be >= 1, got {seq_len}")
    path = Path(path)
    model = load_onnx(path)
    try:
        graph = audit_graph(model, seq_len)
    except AuditError:
        raise
    except Exception as e:  # onnxruntime rejects the model or the dummy batch (e.g. T > max positions)
        raise AuditError(f"onnxruntime could not run {path} at batch 1 x {seq_len} to read shapes "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    if not graph.products:
        raise AuditError(f"{path} has no matrix products (MatMul, Gemm, MatMulInteger, ...) to audit")
    name_layers_by_module(graph)
    return build_audit(graph, size_info(model, path), foreign_notes(graph), source=str(path),
                       blora_export_graph=any("module" in r.meta for r in graph.products))


def _n(x) -> str:
    return "-" if x is None else f"{int(x):,}"


def format_table(audit: Audit) -> str:
    """A readable per-layer table and the totals."""
    rows = [("layer", "kind", "rank", "W", "A", "container", "MACs", "BOPs")]
    for r in audit.layers:
        rank = "-" if r.rank is None else f"{r.rank}/{r.max_rank}"
        calls = f" (x{r.calls})" if r.calls > 1 else ""
        rows.append((r.name + calls, r.kind, rank, str(r.w_bits), str(r.a_bits), r.container, _n(r.macs),
                     _n(r.bops)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 6, 7}
    lines = [f"BOP audit of {audit.source} at batch 1 x T = {audit.seq_len} (BOPs = MACs x W bits x A bits)", ""]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    t, size = audit.totals, audit.size
    whole, adapted = t.whole_model, t.adapted
    lines += ["", f"whole model: {_n(whole.bops)} BOPs vs {_n(whole.bops_fp32)} fp32 "
                  f"(-{100 * whole.reduction:.1f}%); uniform W8A8 reference {_n(t.w8a8_reference_bops)}"]
    if adapted.bops_fp32:
        lines.append(f"adapted projections: {_n(adapted.bops)} BOPs vs {_n(adapted.bops_fp32)} fp32 "
                     f"(-{100 * adapted.reduction:.1f}%)")
    else:
        lines.append("adapted projections: none recorded in this graph")
    lines.append(f"size: {_n(size.onnx_bytes)} bytes; fp32: {_n(size.fp32_onnx_bytes)} bytes, "
                 f"{size.fp32_onnx_bytes_source} ({size.ratio:.3f}x)")
    lines += [f"note: {n}" for n in audit.notes]
    return "\n".join(lines)
