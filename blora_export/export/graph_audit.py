"""The BOP audit of a graph: its products (graph_products.py) with this exporter's learned widths, per layer.

This exporter records each product's learned widths as node metadata (blora.w_bits / blora.a_bits, with the
module, role, rank and adapted flag). The audit counts BOPs at those learned widths, after checking them
against the graph:
- a weight's learned width is checked as a BOUND, not read: the stored codes must fit in it (the codes' lower
  bound <= learned) and it must fit in its container (learned <= container bits). The codes cannot prove more:
  an 8-bit weight whose codes happen to span 4 bits is indistinguishable from a 4-bit weight;
- an activation's learned width must EQUAL the width the graph shows (Q/DQ type narrowed by its Clip range).
A contradiction is an AuditError. Graphs without metadata (other tools') are counted at the widths the graph
shows. The arithmetic is blora_export.bops (one cost model for training's penalty and this audit).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bops import FP32, MacProfile, bops, totals
from .graph_products import AuditError, ProductRecord, load_model, read_products

REQUANTIZED = "requantized"  # meta flag: another tool quantized this float product after compress


def check_learned_width_bounds(rec: ProductRecord) -> None:
    """The learned widths recorded on a product, checked against the graph, become the widths the audit uses:
    the weight's as a bound (codes fit in it, it fits in the container), the activation's as an equality.

    One exception: a product compress exported as fp32 (recorded width 32) that now holds integers was
    quantized afterwards by another tool (e.g. onnxruntime's quantize_static of a `lora` export); the graph's
    widths count and the rest of the record (module, adapted) still holds."""
    meta = rec.meta
    integer = not rec.weight.container.startswith("fp32") or rec.act.container != "fp32"
    if integer and meta.get("w_bits") == "32" and meta.get("a_bits") in (None, "32"):
        meta.pop("w_bits")
        meta.pop("a_bits", None)
        meta[REQUANTIZED] = "1"
    if "w_bits" in meta:
        learned = int(meta["w_bits"])
        container = 32 if rec.weight.container.startswith("fp32") else _container_bits(rec.weight.container)
        if not rec.weight.value_bits <= learned <= container:
            raise AuditError(f"{rec.layer}: recorded weight width {learned} is outside the bounds the graph sets "
                             f"(its codes need >= {rec.weight.value_bits} bits, container {rec.weight.container})")
        rec.weight.bits = learned
    if "a_bits" in meta:
        learned = int(meta["a_bits"])
        if learned != rec.act.value_bits:
            raise AuditError(f"{rec.layer}: recorded activation width {learned} contradicts the graph "
                             f"({rec.act.value_bits} bits, {rec.act.container})")


def _container_bits(container: str) -> int:
    digits = "".join(c for c in container.split(" ")[0] if c.isdigit())
    return int(digits) if digits else 32


@dataclass
class GraphAudit:
    seq_len: int
    products: list[ProductRecord]

    def _layers(self, adapter: bool) -> dict[str, list[ProductRecord]]:
        out: dict[str, list[ProductRecord]] = {}
        for r in self.products:
            if r.kind == "linear" and (r.meta.get("role") == "adapter") == adapter:
                out.setdefault(r.layer, []).append(r)
        return out

    @property
    def linear_layers(self) -> dict[str, list[ProductRecord]]:
        """The model's Linears (an unmerged adapter's products are not among them)."""
        return self._layers(adapter=False)

    @property
    def adapter_products(self) -> dict[str, list[ProductRecord]]:
        """The products of adapters shipped unmerged (`<layer>.lora_A`, `<layer>.lora_B`): they cost BOPs, but
        the fp32 reference stays the base model's, as in training's cost model."""
        return self._layers(adapter=True)

    def branches(self) -> dict[str, tuple[int, int, int]]:
        return {name: (sum(r.macs for r in recs), recs[0].weight.bits, recs[0].act.bits)
                for name, recs in self.adapter_products.items()}

    @property
    def attention_macs(self) -> int:
        return sum(r.macs for r in self.products if r.kind == "attention")

    def widths(self) -> dict[str, tuple[int, int]]:
        return {name: (recs[0].weight.bits, recs[0].act.bits) for name, recs in self.linear_layers.items()}

    def mac_profile(self) -> MacProfile:
        layers = self.linear_layers
        linears = {name: sum(r.macs for r in recs) for name, recs in layers.items()}
        with_meta = any("role" in recs[0].meta for recs in layers.values())
        if with_meta:
            quantizable = [n for n, recs in layers.items() if recs[0].meta.get("role") == "quantized"]
        else:
            quantizable = [n for n, (w, a) in self.widths().items() if w < FP32 or a < FP32]
        adapted = [n for n, recs in layers.items() if recs[0].meta.get("adapted") == "1"]
        return MacProfile(self.seq_len, linears, self.attention_macs, quantizable, adapted)

    def totals(self) -> dict:
        """bops.totals over the graph's Linears; activation-activation products (attention) are counted at the
        widths the graph gives them (32 x 32 in this exporter's graphs, as training counts them; 8 x 8 where
        e.g. onnxruntime's quantize_static quantized them)."""
        out = totals(self.mac_profile(), self.widths(), self.branches())
        quantized_attention = sum(bops(r.macs, r.weight.bits, r.act.bits) - bops(r.macs, FP32, FP32)
                                  for r in self.products if r.kind == "attention")
        if quantized_attention:
            whole = out["whole_model"]
            whole["bops"] += quantized_attention
            whole["reduction"] = 1 - whole["bops"] / whole["bops_fp32"] if whole["bops_fp32"] else 0.0
        return out

    def layer_rows(self) -> list[dict]:
        """One row per linear layer and unmerged adapter product (calls summed) and per attention product, in
        graph order."""
        rows, seen = [], set()
        layers = {**self.linear_layers, **self.adapter_products}
        for r in self.products:
            if r.kind == "attention":
                rows.append({"name": r.node, "kind": "attention", "macs": r.macs, "w_bits": r.weight.bits,
                             "a_bits": r.act.bits, "container": r.weight.container, "a_container": r.act.container,
                             "rank": None, "max_rank": None, "calls": 1,
                             "bops": bops(r.macs, r.weight.bits, r.act.bits)})
                continue
            if r.layer in seen:
                continue
            seen.add(r.layer)
            recs = layers[r.layer]
            macs = sum(x.macs for x in recs)
            rank = r.meta.get("rank")
            max_rank = r.meta.get("max_rank")
            rows.append({"name": r.layer, "kind": "adapter" if r.meta.get("role") == "adapter" else "linear",
                         "macs": macs, "w_bits": r.weight.bits,
                         "a_bits": r.act.bits, "container": r.weight.container, "a_container": r.act.container,
                         "rank": int(rank) if rank else None, "max_rank": int(max_rank) if max_rank else None,
                         "calls": len(recs), "bops": bops(macs, r.weight.bits, r.act.bits)})
        return rows


def audit_graph(model_or_path, seq_len: int) -> GraphAudit:
    """Audit one ONNX model (a path or a ModelProto) at batch 1 x seq_len."""
    products = read_products(load_model(model_or_path), seq_len)
    for rec in products:
        if rec.kind == "linear":
            check_learned_width_bounds(rec)
    audit = GraphAudit(seq_len, products)
    for name, recs in audit.linear_layers.items():
        if len({(r.weight.bits, r.act.bits) for r in recs}) > 1:
            raise AuditError(f"{name}: its calls use different widths "
                             f"{sorted({(r.weight.bits, r.act.bits) for r in recs})}")
    return audit
