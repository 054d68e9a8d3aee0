"""audit.md (readable report with a per-layer table) and audit.png (learned rank and widths per layer and
per projection: the paper's Figure 2 for this model), both from the audit written to audit.json."""

from __future__ import annotations

import re
from pathlib import Path

from .artifacts import Audit, LayerRecord, Verification
from .fuse import FUSED_OP

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.(.+)$")


def notes(plan, graph, narrowed=None) -> list[str]:
    """Plain-language notes on how this export represents what it learned (for audit.json and audit.md);
    `narrowed`: the word table the size profile re-quantized (export/tables.py), if any."""
    lp = plan.linears
    out = ["Closed rank gates are pruned and adapters merged into W0 before snapping to the learned grid "
             "(the same quantize function as training): a merged adapter adds no MACs.",
             "Pooler, classifier, LayerNorm and softmax stay fp32; biases stay fp32."]
    fused = sum(r.op_type == FUSED_OP for r in graph.products)
    if fused:
        out.append(f"{fused} integer-path Linear products are onnxruntime MatMulIntegerToFloat nodes (domain "
                   "com.microsoft) with their fp32 bias inside: the node onnxruntime's own Q/DQ fusion builds, with "
                   "the same integer products, scales and zero points, plus the bias Add it would leave outside. "
                   "compress --portable writes standard QuantizeLinear/DequantizeLinear -> MatMul instead (other "
                   "runtimes).")
    if any(p.act.mode == "qdq" and not p.act.signed for p in lp):
        out.append("4/8-bit activations: QuantizeLinear -> DequantizeLinear in uint8 with the trained zero point "
                   "(an affine grid fitted to the input's range), exactly training's quantize function; a Clip in "
                   "front keeps 4-bit codes in their range (8-bit codes saturate as QuantizeLinear does).")
    if any(p.act.mode == "qdq" and p.act.signed for p in lp):
        out.append("Symmetric 4/8-bit activations: Clip -> QuantizeLinear -> DequantizeLinear (int8, zero point 0). "
                   "The Clip keeps codes in training's restricted range [-(2^(b-1)-1), 2^(b-1)-1]; QuantizeLinear "
                   "alone would give -128 to inputs below the learned range, where training gives -127.")
    if any(p.act.mode == "round" for p in lp):
        out.append("16-bit activations stay float in the graph (int16 Q/DQ would not run faster): their learned "
                   "range clip and 16-bit rounding are applied with float ops (Clip -> Div -> Round -> Mul), "
                   "exactly as in training, and the product runs as an fp32 MatMul.")
    if any(p.weight.zero_point == 128 for p in lp):
        out.append("Signed 8-bit weights are stored as uint8 with zero point 128 (--kernel exact, or auto on a CPU "
                   "without VNNI; codes unchanged): onnxruntime then runs its u8u8 kernel, exact on every CPU but "
                   "slower than u8s8 (--kernel fast, exact on CPUs with VNNI or ARM dot products).")
    if any(p.weight.bits == 8 and p.weight.container == "int8" and p.weight.delivery == "dq" for p in lp):
        out.append("8-bit weights are int8 codes on onnxruntime's u8s8 integer kernel (--kernel fast, or auto on a "
                   "CPU with VNNI): exact on CPUs "
                   "with VNNI (AVX512-VNNI, AVX-VNNI) or ARM dot products. On AVX2-only x86 CPUs that kernel adds "
                   "pairs of products in 16 bits and saturates when large weight codes (|q| > 63) meet large "
                   "activation codes, as onnxruntime's quantize_dynamic does there; compress --kernel exact avoids "
                   "it at some speed. 4-/2-bit codes in int8 containers (|q| <= 7) are exact with every kernel.")
    if any(p.weight.delivery == "cast" for p in lp):
        out.append("Weight-only layers: integer initializer (packed int4/int2, int8, int16) -> Cast -> Mul(scale),"
                     " constant-folded to fp32 by onnxruntime at load: exact values, fp32 speed, smaller file.")
    if any(p.weight.bits == 2 and p.weight.container.endswith("int4") for p in lp):
        out.append("2-bit weights are stored in an int4 container: packed int2 needs opset 25 (pass --opset 25).")
    folded = sorted({r.layer for r in graph.products if r.constant_input})
    if folded:
        out.append(f"{len(folded)} layers also run on a constant input (e.g. {folded[0]} on the relative "
                     "position embeddings): those products are counted in the BOPs like training counts them, but "
                     "onnxruntime computes them once, at load (constant folding).")
    if plan.embeddings and any(e.container != "fp32" for e in plan.embeddings):
        out.append("Embedding tables: integer rows at their trained width (int8, or packed int4 widened to int8 "
                     "at load); the Gather picks integer rows, which are then dequantized with their per-row scale "
                     "(Cast -> Mul): exact, int8 in memory, no per-inference work on the whole table. Weight-only: "
                     "no MACs, no BOPs.")
    if narrowed:
        out.append(f"Size profile: the word table {narrowed.name} was trained at {narrowed.trained_bits} bits and is "
                   f"re-quantized here to {narrowed.bits}-bit rows (least-error row ranges, training's quantizer); "
                   "verification and eval --ckpt use the same table, so this export is exact to that model, whose "
                   "accuracy can differ slightly from the checkpoint's. The speed profile keeps the trained table.")
    return out


def _fmt_int(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _verify_lines(verify: Verification) -> list[str]:
    if verify.skipped:
        return ["Verification was skipped (--no-verify)."]
    loader = verify.loader
    lines = [f"Rule: {verify.rule}", "",
             f"PyTorch's own noise floor: {loader.noise_floor:.3g} (it keeps {100 * loader.noise_agreement:.1f}%"
             " of its predictions under that noise).", "",
             "| session options | inputs | max abs diff | max rel diff | tolerance | within | agreement | "
             "accuracy onnx / torch |", "|---|---|---|---|---|---|---|---|"]
    for r, title in ((loader, "project loader (blora_export.runtime)"),
                     (verify.default_options, "onnxruntime defaults")):
        acc = "-" if r.accuracy_onnx is None else f"{r.accuracy_onnx:.3f} / {r.accuracy_torch:.3f}"
        lines.append(f"| {title} | {r.n_inputs} | {r.max_abs_diff:.3g} | {r.max_rel_diff:.3g} | "
                     f"{r.tolerance:.3g} | {'yes' if r.within_tolerance else 'NO'} | "
                     f"{_pct(r.agreement)} | {acc} |")
    lines += ["", f"Loader session config: `{verify.session_config}`"]
    return lines


def _adapter_note(audit) -> str:
    branch_macs = sum(r.macs for r in audit.layers if r.kind == "adapter")
    if branch_macs:
        return (f"The adapters ship unmerged (deploy target `adapter`): their products add "
                f"{_fmt_int(branch_macs)} MACs, counted in the BOPs above.")
    return (f"Adapters, if kept unmerged, would add {_fmt_int(audit.totals.unmerged_adapter_macs)} MACs; merged "
            "they add none.")


def markdown(audit: Audit, timings: dict | None = None) -> str:
    t, size, model, export = audit.totals, audit.size, audit.model, audit.export
    lines = [
        "# blora-export audit", "",
        f"- base model: `{model.base_model}` ({model.model_type}), method `{model.method}`, labels {model.labels}",
        f"- export profile `{export.profile}`, opset {export.opset}, inputs {export.input_names}",
        f"- BOPs counted for one sequence of T = {audit.seq_len} tokens (batch 1), BOPs = MACs x w_bits x a_bits",
        "", "## Totals", "",
        "| scope | BOPs | fp32 BOPs | reduction |", "|---|---|---|---|",
        f"| whole model (every MatMul, attention included) | {_fmt_int(t.whole_model.bops)} | "
        f"{_fmt_int(t.whole_model.bops_fp32)} | {_pct(t.whole_model.reduction)} |",
        f"| adapted projections only | {_fmt_int(t.adapted.bops)} | {_fmt_int(t.adapted.bops_fp32)} | "
        f"{_pct(t.adapted.reduction)} |",
        "", f"Uniform W8A8 reference over the same quantizable layers: {_fmt_int(t.w8a8_reference_bops)} BOPs "
        f"(learned widths use {t.whole_model.bops / t.w8a8_reference_bops:.2f}x of it).",
        _adapter_note(audit),
        "", "## Size", "",
        f"model.onnx: {_fmt_int(size.onnx_bytes)} bytes; the merged fp32 graph: "
        f"{_fmt_int(size.fp32_onnx_bytes)} bytes ({size.ratio:.3f}x).",
    ]
    if timings:
        lines += ["", f"Latency on the machine that ran the export (batch 1 x {audit.seq_len}, median of "
                  f"{timings['runs']} runs, not part of audit.json): quantized {timings['quantized_ms']:.2f} ms, "
                  f"fp32 {timings['fp32_ms']:.2f} ms."]
    lines += ["", "## Verification (onnxruntime vs PyTorch eval forward)", ""] + _verify_lines(audit.verify)
    rk = audit.runtime_kernels
    lines += ["", "## Kernels onnxruntime chose", "",
              f"Integer products expected from the plan: {rk.integer_products_expected}; found in the optimized "
              f"graph: {rk.integer_products_found} (matrix-product ops there: {rk.ops})."]
    lines += ["", "## Layers", "",
              "Weight widths are the learned widths recorded at export, checked as bounds against the graph: the "
              "stored codes fit in the learned width, and the learned width fits in the container (codes alone "
              "cannot tell an 8-bit weight that spans a narrow range from a 4-bit one). Activation widths are read "
              "from the graph (Q/DQ type and Clip range) and equal the learned ones. `container` is how the weight "
              "is stored; `kernel` what onnxruntime runs.", "",
              "| layer | kind | rank | w bits | container | a bits | a container | kernel | MACs | BOPs |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in audit.layers:
        rank = "-" if r.rank is None else f"{r.rank}/{r.max_rank}"
        calls = f" (x{r.calls})" if r.calls > 1 else ""
        lines.append(f"| {r.name}{calls} | {r.kind} | {rank} | {r.w_bits} | {r.container} | {r.a_bits} | "
                     f"{r.a_container} | {r.kernel} | {_fmt_int(r.macs)} | {_fmt_int(r.bops)} |")
    if audit.embeddings:
        lines += ["", "## Embedding tables (weight-only, no MACs)", "", "| table | bits | container | shape |",
                  "|---|---|---|---|"]
        for e in audit.embeddings:
            lines.append(f"| {e.name} | {e.bits} | {e.container} | {e.rows} x {e.cols} |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in audit.notes]
    return "\n".join(lines) + "\n"


def _per_layer(layers: list[LayerRecord]) -> tuple[list[int], list[str], dict[str, dict[int, LayerRecord]]]:
    """{projection: {layer index: row}} for the encoder's linear layers."""
    table: dict[str, dict[int, LayerRecord]] = {}
    for r in layers:
        m = _LAYER.search(r.name) if r.kind == "linear" else None
        if m:
            table.setdefault(m.group(2), {})[int(m.group(1))] = r
    indices = sorted({i for rows in table.values() for i in rows})
    return indices, list(table), table


def chart(audit: Audit, path: str | Path) -> None:
    """Grouped bars per encoder layer: learned rank of each adapted projection, weight and activation bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices, projections, table = _per_layer(audit.layers)
    adapted = [p for p in projections if any(r.rank is not None for r in table[p].values())]
    panels = [("learned rank (adapted projections)", "rank", adapted),
              ("weight bits", "w_bits", projections), ("activation bits", "a_bits", projections)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.9 * len(indices) + 5), 9), squeeze=False)
    for ax, (title, key, names) in zip(axes[:, 0], panels, strict=True):
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            values = [getattr(table[name][i], key) or 0 if i in table[name] else 0 for i in indices]
            ax.bar([i + (j - (len(names) - 1) / 2) * width for i in indices], values, width, label=name)
        ax.set_title(title)
        ax.set_xticks(indices)
        ax.set_xlabel("encoder layer")
        if key != "rank":
            ax.set_yscale("log", base=2)
            ax.set_yticks([2, 4, 8, 16, 32])
            ax.set_yticklabels(["2", "4", "8", "16", "32"])
            ax.set_ylim(1.5, 40)
        if names:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    model = audit.model
    fig.suptitle(f"{model.model_type} ({model.method}): learned ranks and widths, T = {audit.seq_len}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100, metadata={"Software": None})
    plt.close(fig)
