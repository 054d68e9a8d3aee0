"""The frozen compression plan: per module, what the export keeps and how each tensor is represented.

This is the ONLY place the exporter reads gates, through the single test-time rule (gates.is_open, via
GatedLoRALinear.deterministic_rank and BayesianBitsQuantizer.effective_bits). Everything downstream (merge,
Q/DQ pass, audit cross-check, report) reads this plain data and nothing else of the training modules' logic.

Representation rules (docs/ONNX.md, measured on onnxruntime 1.32):
- Activations of 4 or 8 bits are quantized in the graph by QuantizeLinear -> DequantizeLinear in an 8-bit
  container: uint8 with the trained zero point for an affine grid (training's default), int8 with zero point 0
  for a symmetric one. A Clip in front keeps the codes in training's code range wherever QuantizeLinear's own
  saturation differs from it: 4-bit codes, and the restricted symmetric range [-127, 127] (QuantizeLinear alone
  would give -128). An 8-bit affine grid saturates exactly like QuantizeLinear: no Clip.
- 16-bit activations stay float tensors (16-bit Q/DQ runs but never fuses): the learned range clip and the
  16-bit rounding are applied with float ops, Clip -> Div -> Round -> Mul, which reproduce training's quantize
  function exactly. 32-bit activations are untouched (training neither clips nor rounds them).
- A layer whose weight has <= 8 bits behind a 4/8-bit activation runs on an integer kernel (speed profile;
  8-bit weights in both profiles): weight codes in an int8 container through a per-channel DequantizeLinear,
  onnxruntime's u8s8 kernel with uint8 activations. On x86 CPUs without VNNI (AVX2 only) that kernel adds pairs
  of products in 16 bits and saturates when full-range 8-bit weights (|q| > 63) meet large activation codes:
  the `fast` kernel choice (default) accepts that there, as onnxruntime's own quantize_dynamic does; the
  `exact` choice stores signed 8-bit codes as uint8 with zero point 128 (the u8u8 kernel), exact everywhere
  and slower. 4- and 2-bit codes (|q| <= 7) are exact with every kernel.
- Every other quantized weight is weight-only: an integer initializer at its learned width (packed int4/int2,
  int8, int16) -> Cast -> Mul(scale) -> fp32 MatMul, constant-folded by onnxruntime at load (exact).
  2-bit weights use packed int2 only at opset >= 25, otherwise an int4 container.
- 32-bit weights stay fp32. Embedding tables: int8 / packed int4 rows; the Gather picks integer rows, which
  are then dequantized with their per-row scale (see qdq._embedding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..bops import MacProfile, adapter_branch
from ..errors import UserError
from ..inject import wrapped_embeddings, wrapped_linears
from ..ste import FLOAT_BITS, code_range
from .options import KERNELS, PROFILES

MIN_OPSET, MAX_OPSET = 21, 25
INT2_OPSET = 25
QDQ_ACT_BITS = (4, 8)  # activation widths quantized by Q/DQ in an 8-bit container
ROUND_ACT_BITS = (16,)  # activation widths rounded with float ops (no integer kernel exists for them)

KERNEL_INTEGER = "MatMulIntegerToFloat (8-bit integer GEMM)"
KERNEL_FOLDED = "fp32 MatMul (integer weight constant-folded at load)"
KERNEL_FLOAT = "fp32 MatMul"

_CONTAINER_BITS = {"int2": 2, "uint2": 2, "int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16,
                   "fp32": 32, "float": 32}


class PlanError(UserError, ValueError):
    """The checkpoint cannot be planned for export (e.g. an opset that cannot hold a learned width)."""


@dataclass(frozen=True)
class ActivationPlan:
    bits: int
    signed: bool  # symmetric signed grid (zero point 0); else affine unsigned
    scale: float  # step size s_a; 0.0 at 32 bits
    zero_point: int  # the code of 0 (affine grids)
    mode: str  # "qdq" ([Clip] -> Q -> DQ, 4/8 bits) | "round" (Clip -> Div -> Round -> Mul, 16 bits) | "float"
    container: str  # "int8" | "uint8" (qdq) | "fp32"

    @property
    def qdq(self) -> bool:
        """Quantized by Q/DQ nodes with an 8-bit integer type: what an integer kernel can consume."""
        return self.mode == "qdq"

    @property
    def code_range(self) -> tuple[int, int]:
        return code_range(self.bits, self.signed)

    @property
    def clips(self) -> bool:
        """Whether a Clip must precede the rounding: QuantizeLinear's saturation is training's code range only
        for an 8-bit affine grid."""
        return self.mode == "round" or (self.qdq and (self.signed or self.bits != 8))


@dataclass(frozen=True)
class WeightPlan:
    bits: int
    signed: bool
    scale: tuple[float, ...]  # step size per output channel (one value when per-tensor)
    container: str  # "uint8" | "int8" | "int4" | "int2" | "int16" (and unsigned variants) | "fp32"
    zero_point: int  # 128 for signed 8-bit codes in a uint8 container, else 0
    delivery: str  # "dq" (DequantizeLinear into an integer kernel) | "cast" (Cast -> Mul) | "float"

    @property
    def code_range(self) -> tuple[int, int]:
        return code_range(self.bits, self.signed)

    @property
    def container_bits(self) -> int:
        return _CONTAINER_BITS[self.container]


@dataclass(frozen=True)
class LinearPlan:
    name: str
    role: str  # "quantized" (encoder Linear) | "float" (head, pooler: fp32)
    d_in: int
    d_out: int
    has_bias: bool
    adapted: bool
    max_rank: int
    kept: tuple[int, ...]  # rank indices kept (a prefix: the gates are nested)
    scaling: float  # lora_alpha / max_rank
    weight: WeightPlan
    act: ActivationPlan
    kernel: str
    macs: int  # from the MAC profile at the plan's sequence length
    unmerged: bool = False  # deploy "adapter": W0 quantized alone, the kept adapter an fp32 branch beside it

    @property
    def rank(self) -> int:
        return len(self.kept)

    def branch_products(self) -> dict[str, tuple[int, int, int]]:
        """An unmerged adapter's two products, name -> (MACs, w_bits, a_bits) (bops.adapter_branch)."""
        if not self.unmerged:
            return {}
        return adapter_branch(self.name, self.macs // (self.d_in * self.d_out), self.d_in, self.d_out, self.rank,
                              self.act.bits)


@dataclass(frozen=True)
class EmbeddingPlan:
    name: str
    bits: int
    scale: tuple[float, ...]  # per row
    container: str  # "int8" | "int4" | "fp32"
    rows: int
    cols: int


@dataclass(frozen=True)
class CompressionPlan:
    profile: str
    opset: int
    seq_len: int
    method: str
    linears: tuple[LinearPlan, ...]
    embeddings: tuple[EmbeddingPlan, ...]
    attention_macs: int

    def linear(self, name: str) -> LinearPlan:
        for p in self.linears:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def quantized(self) -> list[str]:
        return [p.name for p in self.linears if p.role == "quantized"]

    @property
    def adapted(self) -> list[str]:
        return [p.name for p in self.linears if p.adapted]

    def widths(self) -> dict[str, tuple[int, int]]:
        return {p.name: (p.weight.bits, p.act.bits) for p in self.linears}

    def summary(self) -> list[dict]:
        """One small dict per Linear (no scale vectors): for reports and messages."""
        rows = []
        for p in self.linears:
            rows.append({"name": p.name, "role": p.role, "w_bits": p.weight.bits, "a_bits": p.act.bits,
                         "container": p.weight.container, "a_container": p.act.container, "kernel": p.kernel,
                         "rank": p.rank if p.max_rank else None, "max_rank": p.max_rank or None, "macs": p.macs})
        return rows

    def to_dict(self) -> dict:
        return asdict(self)


def _int_container(bits: int, signed: bool) -> str:
    return f"{'' if signed else 'u'}int{bits}"


def _weight_representation(bits: int, signed: bool, act_qdq: bool, profile: str, opset: int,
                           kernel: str) -> tuple[str, int, str, str]:
    """(container, zero point, delivery, kernel) for one weight."""
    if bits >= FLOAT_BITS:
        return "fp32", 0, "float", KERNEL_FLOAT
    if act_qdq and bits <= 8 and (profile == "speed" or bits == 8):
        if bits == 8 and signed and kernel == "exact":
            return "uint8", 128, "dq", KERNEL_INTEGER
        return _int_container(8, signed), 0, "dq", KERNEL_INTEGER
    container_bits = 4 if bits == 2 and opset < INT2_OPSET else bits
    return _int_container(container_bits, signed), 0, "cast", KERNEL_FOLDED


def _activation_plan(quantizer) -> ActivationPlan:
    bits = FLOAT_BITS if quantizer.is_identity else quantizer.effective_bits()
    signed = bool(quantizer.signed)
    if bits >= FLOAT_BITS:
        return ActivationPlan(bits, signed, 0.0, 0, "float", "fp32")
    scale, zero = (float(t) for t in quantizer.grid(bits))
    if bits in ROUND_ACT_BITS:
        return ActivationPlan(bits, signed, scale, int(zero), "round", "fp32")
    if bits not in QDQ_ACT_BITS:
        raise PlanError(f"{bits}-bit activations cannot be exported (supported: 4, 8, 16, 32)")
    return ActivationPlan(bits, signed, scale, int(zero), "qdq", "int8" if signed else "uint8")


def _vector(t) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().reshape(-1).tolist())


def _weight_plan(quantizer, bits: int, act_qdq: bool, profile: str, opset: int, kernel: str) -> WeightPlan:
    signed = bool(quantizer.signed)
    container, zp, delivery, _ = _weight_representation(bits, signed, act_qdq, profile, opset, kernel)
    if bits >= FLOAT_BITS:
        return WeightPlan(bits, signed, (), container, zp, delivery)
    return WeightPlan(bits, signed, _vector(quantizer.scale(bits)), container, zp, delivery)


def needs_int2(model: nn.Module, profile: str) -> bool:
    """Whether some weight would be stored as packed int2 at opset 25 (so the default opset is 25)."""
    for layer in wrapped_linears(model).values():
        w_bits, a_bits = layer.widths()
        act_qdq = (FLOAT_BITS if layer.input_quantizer.is_identity else a_bits) in QDQ_ACT_BITS
        if w_bits == 2 and _weight_representation(2, True, act_qdq, profile, INT2_OPSET, "fast")[2] == "cast":
            return True
    return False


def resolve_opset(requested: int | None, model: nn.Module, profile: str) -> int:
    if requested is None:
        return INT2_OPSET if needs_int2(model, profile) else MIN_OPSET
    if not MIN_OPSET <= requested <= MAX_OPSET:
        raise PlanError(f"opset {requested} is not supported: use {MIN_OPSET} to {MAX_OPSET} (int4/int16 "
                        f"quantization needs {MIN_OPSET}, packed int2 needs {INT2_OPSET})")
    return requested


def make_plan(model: nn.Module, quantized: list[str], adapted: list[str], profile: MacProfile, method: str,
              export_profile: str = "speed", opset: int | None = None, kernel: str = "fast") -> CompressionPlan:
    """Read the deterministic gates of a loaded checkpoint model once and freeze every export decision.

    `profile` is the MAC profile at the export sequence length, keyed by the original Linear names.
    """
    if export_profile not in PROFILES:
        raise PlanError(f"profile must be one of {list(PROFILES)}, got {export_profile!r}")
    if kernel not in KERNELS:
        raise PlanError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    opset = resolve_opset(opset, model, export_profile)
    wrapped = wrapped_linears(model)
    missing = sorted(set(quantized) - set(wrapped))
    if missing:
        raise PlanError(f"quantized modules missing from the model: {missing[:3]}")
    linears = []
    in_order = [n for n, _ in model.named_modules() if n in profile.linears]
    for name in in_order:
        macs = profile.linears[name]
        if name in wrapped:
            layer = wrapped[name]
            act = _activation_plan(layer.input_quantizer)
            w_bits = layer.weight_quantizer.effective_bits()
            weight = _weight_plan(layer.weight_quantizer, w_bits, act.qdq, export_profile, opset, kernel)
            runs = _weight_representation(w_bits, weight.signed, act.qdq, export_profile, opset, kernel)[3]
            d_out, d_in = layer.base.weight.shape
            rank = layer.deterministic_rank()
            linears.append(LinearPlan(
                name=name, role="quantized", d_in=d_in, d_out=d_out, has_bias=layer.base.bias is not None,
                adapted=name in adapted and layer.max_rank > 0, max_rank=layer.max_rank,
                kept=tuple(range(rank)), scaling=float(layer.scaling) if layer.max_rank else 0.0,
                weight=weight, act=act, kernel=runs, macs=int(macs),
                unmerged=bool(layer.unmerged and layer.max_rank and name in adapted)))
        else:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise PlanError(f"{name} is in the MAC profile but is not a Linear in the model")
            linears.append(LinearPlan(
                name=name, role="float", d_in=module.in_features, d_out=module.out_features,
                has_bias=module.bias is not None, adapted=False, max_rank=0, kept=(), scaling=0.0,
                weight=WeightPlan(FLOAT_BITS, True, (), "fp32", 0, "float"),
                act=ActivationPlan(FLOAT_BITS, True, 0.0, 0, "float", "fp32"), kernel=KERNEL_FLOAT, macs=int(macs)))
    not_profiled = sorted(set(wrapped) - set(profile.linears))
    unknown = sorted(set(profile.linears) - set(in_order))
    if not_profiled or unknown:
        raise PlanError(f"the MAC profile does not match the model (never profiled: {not_profiled[:3]}, "
                        f"not in the model: {unknown[:3]})")
    embeddings = []
    for name, emb in wrapped_embeddings(model).items():
        q = emb.weight_quantizer
        bits = FLOAT_BITS if q.is_identity else q.effective_bits()
        rows, cols = emb.base.weight.shape
        if bits >= FLOAT_BITS:
            embeddings.append(EmbeddingPlan(name, bits, (), "fp32", rows, cols))
            continue
        if bits not in (4, 8) or not bool(q.signed):
            raise PlanError(f"embedding {name}: {bits}-bit {'signed' if q.signed else 'unsigned'} rows "
                            "cannot be exported (supported: signed 4 or 8 bits, or 32)")
        embeddings.append(EmbeddingPlan(name, bits, _vector(q.scale(bits)), f"int{bits}", rows, cols))
    return CompressionPlan(profile=export_profile, opset=opset, seq_len=profile.seq_len, method=method,
                           linears=tuple(linears), embeddings=tuple(embeddings),
                           attention_macs=int(profile.attention))


def container_bits(container: str) -> int:
    return _CONTAINER_BITS[container]
