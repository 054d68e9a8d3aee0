"""compress(): checkpoint -> plan -> merged float model -> ONNX -> Q/DQ -> audit + verify -> OUT (atomically)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .. import fused, runtime
from ..atomic import OutputExistsError, atomic_directory, check_not_an_input, check_writable
from ..bops import MacProfile, profile_macs
from ..checkpoint import CheckpointError, CheckpointMeta, check_no_remote_code, load_checkpoint, read_validation
from ..inject import strip
from . import report
from .artifacts import (
    AUDIT_FILE,
    MODEL_FILE,
    Audit,
    Deploy,
    EmbeddingRecord,
    ExportInfo,
    ModelInfo,
    Size,
    Verification,
    build_audit,
)
from .graph_audit import AuditError, GraphAudit, audit_graph
from .measure import latency, runtime_kernels
from .merge import Merged
from .options import CompressOptions, resolve_kernel
from .plan import CompressionPlan, PlanError, make_plan
from .tables import NarrowedTable, narrow_word_table
from .verify import verify_export


@dataclass
class CompressResult:
    out_dir: Path
    audit: Audit
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
    branches = {name: product for lp in plan.linears for name, product in lp.branch_products().items()}
    if graph.branches() != branches:
        errors.append(f"unmerged adapter products (MACs, widths): {sorted(graph.branches().items())[:2]} in the "
                      f"graph, {sorted(branches.items())[:2]} planned")
    extra = sorted(set(layers) - {lp.name for lp in plan.linears})
    if extra:
        errors.append(f"the graph has weight products the plan does not know: {extra[:3]}")
    if graph.attention_macs != plan.attention_macs:
        errors.append(f"attention MACs: {graph.attention_macs} in the graph, {plan.attention_macs} in the profile")
    if errors:
        raise AuditError(f"graph audit disagrees with the plan ({len(errors)} problems): " + "; ".join(errors[:3]))


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
        with fused.eager():
            return _compress(ckpt, out_dir, options, log)
    except (ExportError, *_external_errors()) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, ExportError):
            message = f"onnx/onnxruntime failed during export ({type(e).__name__}: {message})"
        if "nothing was written" not in message:
            message += f"; nothing was written to {out_dir}"
        raise ExportError(message) from e


@dataclass
class _Loaded:
    model: nn.Module
    meta: CheckpointMeta
    tokenizer: object
    examples: list[dict]  # verification inputs ([] with --no-verify)
    narrowed: NarrowedTable | None  # the word table the size profile re-quantized (tables.py)


@dataclass
class _Exported:
    merged: Merged
    input_names: list[str]
    float_bytes: bytes  # the merged fp32 graph: the size and latency reference
    proto: object  # the quantized ModelProto


def _compress(ckpt: str | Path, out_dir: str | Path, options: CompressOptions | None,
              log: Callable[[str], None]) -> CompressResult:
    options = options or CompressOptions()
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    _check_output(ckpt, out_dir, options)
    loaded = _load(ckpt, out_dir, options, log)
    plan = _plan(loaded, options, log)
    exported = _export(loaded, plan, options, log)
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
        model_path = tmp / MODEL_FILE
        _save_model(exported.proto, model_path)
        audit = _audit(model_path, loaded, plan, exported, options, log)
        timings = _timings(model_path, exported, plan.seq_len, options, log)
        _write_outputs(tmp, loaded, plan, exported, audit, timings, options, log)
        log(f"writing {out_dir}")
    return CompressResult(out_dir, audit, plan, timings)


def _check_output(ckpt: Path, out_dir: Path, options: CompressOptions) -> None:
    check_not_an_input(out_dir, {"checkpoint": ckpt, "validation file": options.validation_file})
    if os.path.lexists(out_dir) and not out_dir.is_dir():  # --overwrite replaces an output directory, not a file
        raise OutputExistsError(f"--output-dir {out_dir} exists and is not a directory; choose another --output-dir")
    if out_dir.exists() and not options.overwrite:
        raise OutputExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    check_writable(out_dir)


def _load(ckpt: Path, out_dir: Path, options: CompressOptions, log: Callable[[str], None]) -> _Loaded:
    from transformers import AutoTokenizer

    log(f"loading checkpoint {ckpt}")
    model, meta = load_checkpoint(ckpt, trust_remote_code=options.trust_remote_code)
    check_not_an_input(out_dir, {"base model directory": meta.base_model})
    check_no_remote_code(ckpt, options.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt} has no usable tokenizer files ({e})") from None
    narrowed = narrow_word_table(model, options.profile)
    if narrowed:
        log(f"size profile: word table {narrowed.name} re-quantized from {narrowed.trained_bits}-bit to "
            f"{narrowed.bits}-bit rows")
    return _Loaded(model, meta, tokenizer, _examples(ckpt, options) if options.verify else [], narrowed)


def _plan(loaded: _Loaded, options: CompressOptions, log: Callable[[str], None]) -> CompressionPlan:
    seq_len = options.seq_len or loaded.meta.profile.seq_len
    _check_seq_len(loaded.model, seq_len)
    profile = mac_profile_at(loaded.model, loaded.meta.profile, seq_len)
    meta = loaded.meta
    plan = make_plan(loaded.model, meta.quantized, meta.adapted, profile, meta.config.method, options.profile,
                     options.opset, resolve_kernel(options.kernel))
    log(f"plan: {len(plan.quantized)} quantized Linears ({len(plan.adapted)} adapted), profile {plan.profile}, "
        f"opset {plan.opset}")
    return plan


def _export(loaded: _Loaded, plan: CompressionPlan, options: CompressOptions,
            log: Callable[[str], None]) -> _Exported:
    import onnx

    from .fuse import fuse_integer_products
    from .merge import build_float_model
    from .onnx_export import convert_opset, export_float, model_input_names
    from .qdq import quantize_graph

    merged = build_float_model(loaded.model, plan)
    input_names = model_input_names(merged.model, loaded.tokenizer)
    log("exporting the merged float model with torch.onnx")
    float_proto = convert_opset(export_float(merged.model, input_names), plan.opset)
    log("inserting Q/DQ from the plan")
    proto = quantize_graph(float_proto, plan, merged)
    if not options.portable:
        log(f"fused {fuse_integer_products(proto)} integer products with their biases (onnxruntime operators)")
    onnx.checker.check_model(proto, full_check=True)
    return _Exported(merged, input_names, float_proto.SerializeToString(), proto)


def _audit(model_path: Path, loaded: _Loaded, plan: CompressionPlan, exported: _Exported,
           options: CompressOptions, log: Callable[[str], None]) -> Audit:
    """Audit the written graph, check it against the plan, verify it against PyTorch: audit.json."""
    meta = loaded.meta
    log(f"auditing BOPs from the graph at T = {plan.seq_len}")
    graph = audit_graph(model_path, plan.seq_len)
    cross_check(graph, plan)
    verify = verify_export(model_path, loaded.model, plan, loaded.tokenizer, loaded.examples, exported.input_names,
                           meta, log) if options.verify else Verification()
    onnx_bytes = model_path.stat().st_size
    size = Size(onnx_bytes, len(exported.float_bytes), round(onnx_bytes / len(exported.float_bytes), 4))
    return build_audit(
        graph, size, report.notes(plan, graph, loaded.narrowed), plan,
        model=ModelInfo(meta.base_model, loaded.model.config.model_type, plan.method, meta.task, meta.problem_type,
                        list(meta.labels)),
        export=ExportInfo(plan.profile, plan.opset, exported.input_names),
        embeddings=[EmbeddingRecord(e.name, e.bits, e.container, e.rows, e.cols) for e in plan.embeddings],
        verify=verify, runtime_kernels=runtime_kernels(model_path, plan, graph))


def _timings(model_path: Path, exported: _Exported, seq_len: int, options: CompressOptions,
             log: Callable[[str], None]) -> dict:
    if not options.timing_runs:
        return {}
    log("timing batch-1 latency (audit.md only)")
    return {"runs": options.timing_runs, "quantized_ms": latency(model_path, seq_len, options.timing_runs),
            "fp32_ms": latency(exported.float_bytes, seq_len, options.timing_runs)}


def _write_outputs(tmp: Path, loaded: _Loaded, plan: CompressionPlan, exported: _Exported, audit: Audit,
                   timings: dict, options: CompressOptions, log: Callable[[str], None]) -> None:
    """Everything beside model.onnx: tokenizer, deploy.json, audit.json/.md/.png (and the PEFT adapter)."""
    meta = loaded.meta
    loaded.tokenizer.save_pretrained(str(tmp))
    Deploy(input_names=exported.input_names, labels=list(meta.labels), problem_type=meta.problem_type,
           max_length=meta.max_seq_length, session_config=dict(runtime.SESSION_CONFIG), profile=plan.profile,
           opset=plan.opset).write(tmp)
    audit.write(tmp / AUDIT_FILE)
    (tmp / "audit.md").write_text(report.markdown(audit, timings), encoding="utf-8")
    report.chart(audit, tmp / "audit.png")
    if options.peft_adapter:
        from .peft_adapter import ADAPTER_DIR, write_peft_adapter

        log(f"writing the pruned adapter in PEFT's LoRA format ({ADAPTER_DIR}/)")
        write_peft_adapter(tmp / ADAPTER_DIR, loaded.model, plan, meta.base_model, meta.base_revision, list(meta.head))


def _save_model(proto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path))
