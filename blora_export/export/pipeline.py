"""compress(): checkpoint -> plan -> merged float model -> ONNX -> Q/DQ -> audit + verify -> OUT (atomically)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .. import runtime
from ..atomic import OutputExistsError, atomic_directory, check_not_an_input, check_writable
from ..bops import MacProfile, profile_macs
from ..checkpoint import CheckpointError, check_no_remote_code, load_checkpoint, read_validation
from ..inject import strip
from . import report
from .graph_audit import AuditError, GraphAudit, audit_graph
from .measure import latency, runtime_kernels
from .plan import KERNEL_FLOAT, CompressionPlan, PlanError, make_plan
from .verify import verify_export

AUDIT_FORMAT = "blora-export audit"


@dataclass
class CompressOptions:
    profile: str = "speed"
    seq_len: int | None = None  # T for the BOP audit; default: the checkpoint's MAC profile length
    opset: int | None = None  # default: 21, or 25 when packed int2 weights are used
    verify: bool = True
    overwrite: bool = False
    validation_file: str | None = None
    trust_remote_code: bool = False
    timing_runs: int = 10  # latency runs for audit.md (0: skip)
    peft_adapter: bool = False  # also write the pruned fp32 adapter in PEFT's LoRA format to OUT/peft_adapter/


@dataclass
class CompressResult:
    out_dir: Path
    audit: dict
    plan: CompressionPlan
    timings: dict = field(default_factory=dict)


def mac_profile_at(model: nn.Module, stored: MacProfile, seq_len: int) -> MacProfile:
    """The checkpoint's MAC profile, re-profiled on the original architecture when T differs."""
    if seq_len == stored.seq_len:
        return stored
    return profile_macs(strip(model), seq_len, stored.quantizable, stored.adapted)


def _check_seq_len(model: nn.Module, seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if seq_len < 1 or (limit and seq_len > limit and getattr(model.config, "position_biased_input", True)):
        raise PlanError(f"--seq-len {seq_len} is outside 1..{limit} (the model's max_position_embeddings)")


def cross_check(graph: GraphAudit, plan: CompressionPlan) -> None:
    """Graph-derived MACs and widths must equal the plan's (and the checkpoint's MAC profile)."""
    errors = []
    layers = graph.linear_layers
    for lp in plan.linears:
        recs = layers.get(lp.name)
        if not recs:
            errors.append(f"{lp.name} is planned but has no matrix product in the graph")
            continue
        macs = sum(r.macs for r in recs)
        widths = (recs[0].weight.bits, recs[0].act.bits)
        if macs != lp.macs:
            errors.append(f"{lp.name}: {macs} MACs in the graph, {lp.macs} in the MAC profile")
        if widths != (lp.weight.bits, lp.act.bits):
            errors.append(f"{lp.name}: widths {widths} in the graph, {(lp.weight.bits, lp.act.bits)} planned")
    extra = sorted(set(layers) - {lp.name for lp in plan.linears})
    if extra:
        errors.append(f"the graph has weight products the plan does not know: {extra[:3]}")
    if graph.attention_macs != plan.attention_macs:
        errors.append(f"attention MACs: {graph.attention_macs} in the graph, {plan.attention_macs} in the profile")
    if errors:
        raise AuditError(f"graph audit disagrees with the plan ({len(errors)} problems): " + "; ".join(errors[:3]))


def _layer_rows(graph: GraphAudit, plan: CompressionPlan) -> list[dict]:
    kernels = {lp.name: lp.kernel for lp in plan.linears}
    rows = []
    for r in graph.layer_rows():
        r["kernel"] = kernels.get(r["name"], KERNEL_FLOAT)
        if r["kind"] == "linear" and r["rank"] is not None:
            lp = plan.linear(r["name"])
            r["adapter_macs"] = r["macs"] // (lp.d_in * lp.d_out) * lp.rank * (lp.d_in + lp.d_out)
        rows.append(r)
    return rows


def _examples(ckpt: Path, options: CompressOptions) -> list[dict]:
    from .verify import read_examples

    if options.validation_file:
        return read_examples(options.validation_file)
    rows = [r for r in read_validation(ckpt) if isinstance(r.get("text"), str)]
    if not rows:
        raise CheckpointError(f"{ckpt} holds no validation examples to verify the export on; pass "
                              "--validation-file FILE (JSON lines with a 'text' field) or --no-verify")
    return rows


def _external_errors() -> tuple[type[BaseException], ...]:
    """Exception types of onnx and onnxruntime (plain Exception subclasses, so a CLI would show a traceback)."""
    import onnx.checker
    import onnx.shape_inference
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    kinds = [onnx.checker.ValidationError, getattr(onnx.shape_inference, "InferenceError", None)]
    kinds += [v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return tuple(k for k in kinds if k is not None)


def compress(ckpt: str | Path, out_dir: str | Path, options: CompressOptions | None = None,
             log: Callable[[str], None] = lambda _msg: None) -> CompressResult:
    """Export a checkpoint to OUT/ (model.onnx, tokenizer, deploy.json, audit.json/.md/.png), atomically.

    An export, onnx or onnxruntime failure becomes one ExportError; OUT is then untouched (atomic_directory).
    """
    from .onnx_export import ExportError

    try:
        return _compress(ckpt, out_dir, options, log)
    except (ExportError, *_external_errors()) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, ExportError):
            message = f"onnx/onnxruntime failed during export ({type(e).__name__}: {message})"
        if "nothing was written" not in message:
            message += f"; nothing was written to {out_dir}"
        raise ExportError(message) from e


def _compress(ckpt: str | Path, out_dir: str | Path, options: CompressOptions | None,
              log: Callable[[str], None]) -> CompressResult:
    import onnx
    from transformers import AutoTokenizer

    from .merge import build_float_model
    from .onnx_export import convert_opset, export_float, model_input_names
    from .qdq import quantize_graph

    options = options or CompressOptions()
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    check_not_an_input(out_dir, {"checkpoint": ckpt, "validation file": options.validation_file})
    if out_dir.exists() and not options.overwrite:
        raise OutputExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    check_writable(out_dir)
    log(f"loading checkpoint {ckpt}")
    model, meta = load_checkpoint(ckpt, trust_remote_code=options.trust_remote_code)
    check_not_an_input(out_dir, {"base model directory": meta.base_model})
    check_no_remote_code(ckpt, options.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt} has no usable tokenizer files ({e})") from None
    examples = _examples(ckpt, options) if options.verify else []
    seq_len = options.seq_len or meta.profile.seq_len
    _check_seq_len(model, seq_len)
    profile = mac_profile_at(model, meta.profile, seq_len)
    plan = make_plan(model, meta.quantized, meta.adapted, profile, meta.config.method, options.profile,
                     options.opset)
    log(f"plan: {len(plan.quantized)} quantized Linears ({len(plan.adapted)} adapted), profile {plan.profile}, "
        f"opset {plan.opset}")
    merged = build_float_model(model, plan)
    input_names = model_input_names(merged.model, tokenizer)
    log("exporting the merged float model with torch.onnx")
    float_proto = convert_opset(export_float(merged.model, input_names), plan.opset)
    log("inserting Q/DQ from the plan")
    proto = quantize_graph(float_proto, plan, merged)
    onnx.checker.check_model(proto, full_check=True)
    fp32_bytes = float_proto.SerializeToString()
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
        model_path = tmp / runtime.MODEL_FILE
        onnx.save_model(proto, str(model_path))
        log(f"auditing BOPs from the graph at T = {seq_len}")
        graph = audit_graph(model_path, seq_len)
        cross_check(graph, plan)
        verify = verify_export(model_path, model, tokenizer, examples, input_names, meta, log) \
            if options.verify else {"skipped": True}
        totals = graph.totals()
        layers = _layer_rows(graph, plan)
        totals["unmerged_adapter_macs"] = sum(r.get("adapter_macs", 0) for r in layers)
        audit = {
            "format": AUDIT_FORMAT, "version": 1,
            "model": {"base_model": meta.base_model, "model_type": model.config.model_type,
                      "method": plan.method, "task": meta.task, "problem_type": meta.problem_type,
                      "labels": list(meta.labels)},
            "export": {"profile": plan.profile, "opset": plan.opset, "input_names": input_names},
            "seq_len": seq_len,
            "layers": layers,
            "embeddings": [{"name": e.name, "bits": e.bits, "container": e.container, "rows": e.rows,
                            "cols": e.cols} for e in plan.embeddings],
            "attention_macs": graph.attention_macs,
            "totals": totals,
            "size": {"onnx_bytes": model_path.stat().st_size, "fp32_onnx_bytes": len(fp32_bytes),
                     "ratio": round(model_path.stat().st_size / len(fp32_bytes), 4)},
            "verify": verify,
            "runtime_kernels": runtime_kernels(model_path, plan, graph),
            "notes": report.notes(plan, graph),
        }
        timings = {}
        if options.timing_runs:
            log("timing batch-1 latency (audit.md only)")
            timings = {"runs": options.timing_runs,
                       "quantized_ms": latency(model_path, seq_len, options.timing_runs),
                       "fp32_ms": latency(fp32_bytes, seq_len, options.timing_runs)}
        deploy = {"format": "blora-export deploy", "version": 1, "model": runtime.MODEL_FILE,
                  "input_names": input_names, "output_name": "logits", "labels": list(meta.labels),
                  "problem_type": meta.problem_type, "max_length": meta.max_seq_length,
                  "session_config": dict(runtime.SESSION_CONFIG), "profile": plan.profile, "opset": plan.opset}
        tokenizer.save_pretrained(str(tmp))
        (tmp / runtime.DEPLOY_FILE).write_text(json.dumps(deploy, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "audit.json").write_text(json.dumps(audit, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "audit.md").write_text(report.markdown(audit, timings), encoding="utf-8")
        report.chart(audit, tmp / "audit.png")
        if options.peft_adapter:
            from .peft_adapter import ADAPTER_DIR, write_peft_adapter

            log(f"writing the pruned adapter in PEFT's LoRA format ({ADAPTER_DIR}/)")
            write_peft_adapter(tmp / ADAPTER_DIR, model, plan, meta.base_model, meta.base_revision, list(meta.head))
        log(f"writing {out_dir}")
    return CompressResult(out_dir, audit, plan, timings)
