"""The files `compress` writes for others to read, each with one typed definition: audit.json (`Audit`) and
deploy.json (`Deploy`). One format name and version each; `to_dict` writes, `from_dict` reads and validates.
`build_audit` makes the audit of a graph for both `compress` and `blora-export audit`; every reader (the report,
the command line, the runtime loader, the benchmark tools) goes through these types, never through string keys.

An audit from `compress` carries the sections only compress knows (model, export, embeddings, verify,
runtime_kernels, per-layer kernel and adapter MACs); one from `blora-export audit` carries its source file
instead. Sections a producer does not know are left out of the JSON, not written as null.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.tasks import MAX_LENGTH_LIMIT, PROBLEM_TYPES
from ..errors import one_line
from ..typed_json import JsonShapeError, Record, from_json
from .options import PROFILES

AUDIT_FORMAT, AUDIT_VERSION = "blora-export audit", 1
DEPLOY_FORMAT, DEPLOY_VERSION = "blora-export deploy", 1
AUDIT_FILE, DEPLOY_FILE, MODEL_FILE = "audit.json", "deploy.json", "model.onnx"


# ---- audit.json -----------------------------------------------------------------------------------------------
@dataclass
class LayerRecord(Record):
    """One linear layer (its calls summed) or one attention product."""

    OMIT_IF_NONE = ("kernel", "adapter_macs")
    name: str
    kind: str  # "linear" | "attention" | "adapter" (a product of an adapter shipped unmerged)
    macs: int
    w_bits: int
    a_bits: int
    container: str  # how the weight (or second operand) is stored
    a_container: str
    rank: int | None
    max_rank: int | None
    calls: int
    bops: int
    kernel: str | None = None  # compress: what onnxruntime runs for this layer
    adapter_macs: int | None = None  # compress: the adapter's MACs if it were kept unmerged


@dataclass
class Scope(Record):
    bops: int
    bops_fp32: int
    reduction: float


@dataclass
class Totals(Record):
    OMIT_IF_NONE = ("unmerged_adapter_macs",)
    whole_model: Scope
    adapted: Scope
    w8a8_reference_bops: int
    unmerged_adapter_macs: int | None = None  # compress


@dataclass
class Size(Record):
    OMIT_IF_NONE = ("fp32_onnx_bytes_source",)
    onnx_bytes: int
    fp32_onnx_bytes: int
    ratio: float
    fp32_onnx_bytes_source: str | None = None  # blora-export audit: measured, exact or estimated


@dataclass
class ModelInfo(Record):
    base_model: str
    model_type: str
    method: str
    task: str
    problem_type: str
    labels: list[str]


@dataclass
class ExportInfo(Record):
    profile: str
    opset: int
    input_names: list[str]


@dataclass
class EmbeddingRecord(Record):
    name: str
    bits: int
    container: str
    rows: int
    cols: int


@dataclass
class Agreement(Record):
    """onnxruntime against the PyTorch reference on the verification inputs, for one set of session options."""

    n_inputs: int
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max(1, max |logit_torch|)
    tolerance: float
    within_tolerance: bool
    agreement: float
    noise_floor: float = 0.0
    noise_agreement: float = 1.0
    accuracy_onnx: float | None = None
    accuracy_torch: float | None = None
    mean_abs_diff: float = 0.0  # the mean over inputs of each input's largest difference
    mean_tolerance: float = 0.0
    noise_mean: float = 0.0

    def rounded(self) -> Agreement:
        """Differences to 4 significant digits: stable bytes in audit.json."""
        four = {k: float(f"{getattr(self, k):.4g}") for k in ("max_abs_diff", "max_rel_diff", "tolerance",
                                                              "noise_floor", "mean_abs_diff", "mean_tolerance",
                                                              "noise_mean")}
        return dataclasses.replace(self, **four)


@dataclass
class Verification(Record):
    """The audit's `verify` section. In JSON: {"skipped": true} (--no-verify), or the loader options' agreement
    at the top level with the rule it was held to, the session config, and the agreement under onnxruntime's
    default options."""

    OWN_JSON_SHAPE = True
    loader: Agreement | None = None  # None: skipped
    default_options: Agreement | None = None
    session_config: dict[str, str] = field(default_factory=dict)
    rule: str = ""

    @property
    def skipped(self) -> bool:
        return self.loader is None

    def to_dict(self) -> dict:
        if self.loader is None:
            return {"skipped": True}
        return {**self.loader.rounded().to_dict(), "session_config": dict(self.session_config), "rule": self.rule,
                "default_options": self.default_options.rounded().to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Verification:
        where = where or "verify"
        if data == {"skipped": True}:
            return cls()
        if not isinstance(data, dict):
            raise JsonShapeError(f"{where} must be an object")
        names = {f.name for f in dataclasses.fields(Agreement)}
        extra = {k: v for k, v in data.items() if k not in names}
        rest = from_json(_VerificationRest, extra, where)
        return cls(Agreement.from_dict({k: v for k, v in data.items() if k in names}, where),
                   rest.default_options, rest.session_config, rest.rule)


@dataclass
class _VerificationRest(Record):
    default_options: Agreement
    session_config: dict[str, str]
    rule: str


@dataclass
class RuntimeKernels(Record):
    integer_products_expected: int
    integer_products_found: int
    ops: dict[str, int]


@dataclass
class Audit(Record):
    """audit.json: the BOP audit of one ONNX graph (compress) or of any ONNX file (blora-export audit)."""

    OMIT_IF_NONE = ("model", "export", "embeddings", "verify", "runtime_kernels", "source", "blora_export_graph")
    seq_len: int
    layers: list[LayerRecord]
    attention_macs: int
    totals: Totals
    size: Size
    notes: list[str]
    format: str = AUDIT_FORMAT
    version: int = AUDIT_VERSION
    # compress
    model: ModelInfo | None = None
    export: ExportInfo | None = None
    embeddings: list[EmbeddingRecord] | None = None
    verify: Verification | None = None
    runtime_kernels: RuntimeKernels | None = None
    # blora-export audit
    source: str | None = None
    blora_export_graph: bool | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Audit:
        where = where or AUDIT_FILE
        audit = from_json(cls, data, where)
        if (audit.format, audit.version) != (AUDIT_FORMAT, AUDIT_VERSION):
            raise JsonShapeError(f"{where} is format {audit.format!r} version {audit.version}, "
                                 f"expected {AUDIT_FORMAT!r} version {AUDIT_VERSION}")
        t, size = audit.totals, audit.size
        counts = [audit.attention_macs, t.w8a8_reference_bops, t.whole_model.bops, t.whole_model.bops_fp32,
                  t.adapted.bops, t.adapted.bops_fp32, *(n for r in audit.layers for n in (r.macs, r.bops, r.calls))]
        # Sizes and counts are never negative: a reader (the size ratio of `blora-export audit`) divides by them.
        if audit.seq_len < 1 or min(size.onnx_bytes, size.fp32_onnx_bytes, size.ratio) <= 0 or min(counts) < 0:
            raise JsonShapeError(f"{where} has a negative or zero count, size or seq_len")
        return audit

    @classmethod
    def read(cls, path: str | Path) -> Audit:
        return cls.from_dict(_read_json(Path(path)), str(path))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_audit(graph, size: Size, notes: list[str], plan=None, **sections) -> Audit:
    """The audit of a read graph (export.graph_audit.GraphAudit). With the compression `plan` (compress), each
    linear layer also records its kernel and its unmerged adapter's MACs; `sections` are the producer's own
    (compress: model, export, embeddings, verify, runtime_kernels; blora-export audit: source,
    blora_export_graph)."""
    from .plan import KERNEL_FLOAT

    layers = [LayerRecord(**row) for row in graph.layer_rows()]
    totals = Totals.from_dict(graph.totals())
    if plan is not None:
        kernels = {lp.name: lp.kernel for lp in plan.linears}
        for r in layers:
            r.kernel = kernels.get(r.name, KERNEL_FLOAT)
            if r.kind == "linear" and r.rank is not None:
                lp = plan.linear(r.name)
                r.adapter_macs = r.macs // (lp.d_in * lp.d_out) * lp.rank * (lp.d_in + lp.d_out)
        totals.unmerged_adapter_macs = sum(r.adapter_macs or 0 for r in layers)
    return Audit(seq_len=graph.seq_len, layers=layers, attention_macs=graph.attention_macs, totals=totals,
                 size=size, notes=notes, **sections)


# ---- deploy.json ----------------------------------------------------------------------------------------------
@dataclass
class Deploy(Record):
    """deploy.json: what a runtime needs to serve model.onnx (blora_export.runtime reads it)."""

    input_names: list[str]
    labels: list[str]
    problem_type: str
    max_length: int
    session_config: dict[str, str]
    profile: str
    opset: int
    output_name: str = "logits"
    model: str = MODEL_FILE
    format: str = DEPLOY_FORMAT
    version: int = DEPLOY_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Deploy:
        where = where or DEPLOY_FILE
        deploy = from_json(cls, data, where)
        if (deploy.format, deploy.version) != (DEPLOY_FORMAT, DEPLOY_VERSION):
            raise JsonShapeError(f"{where} is format {deploy.format!r} version {deploy.version}, expected "
                                 f"{DEPLOY_FORMAT!r} version {DEPLOY_VERSION}")
        problems = []
        if not 1 <= deploy.max_length <= MAX_LENGTH_LIMIT:
            problems.append(f"max_length {deploy.max_length} is outside 1..{MAX_LENGTH_LIMIT}")
        if deploy.problem_type not in PROBLEM_TYPES:
            problems.append(f"problem_type {deploy.problem_type!r} is not one of {list(PROBLEM_TYPES)}")
        if not _unique_names(deploy.labels) or (deploy.problem_type == "regression") != (len(deploy.labels) == 1):
            problems.append(f"labels {deploy.labels!r:.60} are not distinct non-empty names (one for regression)")
        if not _unique_names(deploy.input_names) or not deploy.output_name:
            problems.append("input_names must be distinct non-empty names and output_name non-empty")
        if Path(deploy.model).name != deploy.model or not deploy.model:
            problems.append(f"model {deploy.model!r} is not a file name inside the directory")
        if deploy.profile not in PROFILES:
            problems.append(f"profile {deploy.profile!r} is not one of {list(PROFILES)}")
        if deploy.opset < 1:
            problems.append(f"opset {deploy.opset} is not a positive version")
        if problems:
            raise JsonShapeError(f"{where} has invalid values ({'; '.join(problems)})")
        return deploy

    @classmethod
    def read(cls, out_dir: str | Path) -> Deploy:
        path = Path(out_dir) / DEPLOY_FILE
        return cls.from_dict(_read_json(path), str(path))

    def write(self, out_dir: str | Path) -> None:
        path = Path(out_dir) / DEPLOY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _unique_names(names: list[str]) -> bool:
    return bool(names) and all(names) and len(set(names)) == len(names)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JsonShapeError(f"{path} is missing") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, an int of 5000 digits
        raise JsonShapeError(f"{path} is not readable JSON ({type(e).__name__}: {one_line(e)[:200]})") from None


__all__ = ["AUDIT_FILE", "AUDIT_FORMAT", "DEPLOY_FILE", "MODEL_FILE", "Agreement", "Audit", "Deploy", "EmbeddingRecord",
           "ExportInfo", "LayerRecord", "ModelInfo", "RuntimeKernels", "Scope", "Size", "Totals", "Verification",
           "build_audit"]
