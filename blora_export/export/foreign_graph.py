"""Graphs of other tools (fp32 exports, onnxruntime quantize_dynamic / quantize_static outputs): they carry no
blora.* metadata, so their layers are named after module paths and the audit says what it cannot know."""

from __future__ import annotations

from .graph_audit import REQUANTIZED, GraphAudit


def _module_path(node_name: str) -> str | None:
    """'/bert/encoder/layer.0/attention/self/query/MatMul_quant' -> 'bert.encoder.layer.0.attention.self.query'
    (torch.onnx names nodes after the module that ran them); None when the name has no module path."""
    parts = [p for p in node_name.split("/") if p]
    if not node_name.startswith("/") or len(parts) < 2:
        return None
    return ".".join(parts[:-1])


def name_layers_by_module(audit: GraphAudit) -> None:
    """Graphs from other tools carry no blora.module metadata, so their Linears are named after their weight
    initializer (e.g. onnx::MatMul_376): rename them after the module path in the node names instead, where that
    names each weight uniquely (for `blora-export audit`'s table)."""
    foreign = [r for r in audit.products if r.kind == "linear" and "module" not in r.meta]
    paths: dict[str, set[str]] = {}
    for r in foreign:
        path = _module_path(r.node)
        if path is not None:
            paths.setdefault(r.layer, set()).add(path)
    chosen = {root: next(iter(p)) for root, p in paths.items() if len(p) == 1}
    taken = list(chosen.values())
    unique = {root: p for root, p in chosen.items() if taken.count(p) == 1}
    for r in foreign:
        r.layer = unique.get(r.layer, r.layer)


def foreign_notes(audit: GraphAudit) -> list[str]:
    """What `blora-export audit` says about a graph this exporter did not write, or that another tool changed."""
    notes = []
    if not any("module" in r.meta for r in audit.products):
        notes.append("Graph without blora-export metadata: rank and max_rank are null and no projections are "
                     "recorded as adapted, so the 'adapted' totals are empty (0 BOPs).")
    if any(r.meta.get(REQUANTIZED) for r in audit.products):
        notes.append("Products compress exported as fp32 were quantized afterwards by another tool: their widths "
                     "are read from the graph.")
    if any(r.kind == "attention" and (r.weight.bits < 32 or r.act.bits < 32) for r in audit.products):
        notes.append("Attention products are quantized in this graph and counted at their widths (blora-export "
                     "keeps them fp32); the W8A8 reference counts them at 32 x 32.")
    return notes
