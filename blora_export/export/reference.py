"""The integer-exact reference: the PyTorch eval forward with each integer-kernel layer computed the way
onnxruntime's integer kernels compute it.

onnxruntime runs a layer with <= 8-bit weights behind a Q/DQ activation as MatMulIntegerToFloat: the codes'
products are accumulated exactly in int32, then multiplied by the float32 product of the two scales and the
bias added. A float matmul of the dequantized values (the plain eval forward) rounds each partial sum instead,
and quantized layers downstream amplify that: a value nudged across a rounding boundary moves a whole step.
Inside `integer_exact(model, plan)` those layers accumulate the same codes exactly (`exact_code_product`), so
the reference and onnxruntime differ only by the float order of what stays float (LayerNorm, softmax, GELU,
the attention products, weight-only layers).

The codes come from the training modules (the quantize function on the trained ranges), not from the export:
a faulty export cannot make its own reference agree with it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..inject import wrapped_linears
from ..residual_quant import grid_quantize
from .plan import KERNEL_INTEGER, CompressionPlan

FLOAT32_EXACT_INTEGERS = 2**24  # float32 holds every integer of at most this magnitude exactly


def exact_code_product(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w.T for integer-valued float32 codes, exactly (float32 where it holds the sums, else float64).

    The inner dimension is cut into chunks short enough that no partial sum can pass 2^24: then every partial
    sum is an integer float32 holds exactly, whatever order or fused multiply-adds the matmul uses, so each
    chunk's float32 product is exact; the chunks are added in float64 (|sums| < 2^53). A float64 matmul of the
    whole gives the same numbers at 2-4x the time. Needs IEEE float32 matmuls (`integer_exact` ensures them on
    the CPU)."""
    if not (a.numel() and w.numel()):
        return a @ w.T
    largest_product = float(a.abs().max()) * float(w.abs().max())
    # NaN/inf inputs (they reach the logits, where verification sees them) or a single product too large for
    # float32 (codes wider than the integer kernels take): the whole product in float64
    if not math.isfinite(largest_product) or largest_product > FLOAT32_EXACT_INTEGERS:
        return a.double() @ w.double().T
    inner = a.shape[-1]
    chunk = inner if largest_product == 0 else int(FLOAT32_EXACT_INTEGERS // largest_product)
    if chunk >= inner:
        return a @ w.T
    acc = (a[..., :chunk] @ w[:, :chunk].T).double()
    for i in range(chunk, inner, chunk):
        acc += a[..., i:i + chunk] @ w[:, i:i + chunk].T
    return acc


def _exact_forward(layer: nn.Module):
    """GatedLoRALinear.forward with the main product as int32 codes x codes, scaled once (float32)."""
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    weight = layer.base.weight if layer.unmerged else layer.merged_weight()
    w_low, w_high = wq.range_bounds()
    w_codes, w_scale, _ = grid_quantize(weight, w_low, w_high, wq.effective_bits(), bool(wq.signed))
    w_scale = w_scale.reshape(-1)  # the weights are fixed within the block: quantized once, not per batch

    def forward(x: torch.Tensor) -> torch.Tensor:
        a_low, a_high = aq.range_bounds()
        a_codes, a_scale, a_zero = grid_quantize(x, a_low, a_high, aq.effective_bits(), bool(aq.signed))
        acc = exact_code_product(a_codes - a_zero, w_codes)
        y = acc.float() * (a_scale * w_scale)
        if layer.base.bias is not None:
            y = y + layer.base.bias
        if layer.unmerged and layer.max_rank:  # the fp32 branch of an unmerged adapter
            x_hat = (a_codes - a_zero) * a_scale
            y = y + F.linear(F.linear(x_hat, layer.lora_A) * (layer.rank_mask() * layer.lora_E),
                             layer.lora_B) * layer.scaling
        return y

    return forward


@contextlib.contextmanager
def ieee_float32_matmuls() -> Iterator[None]:
    """Within the block CPU float32 matmuls are plain IEEE float32 (oneDNN may be set to bf16 or tf32)."""
    backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    saved = getattr(backend, "fp32_precision", None)
    if saved is None:  # a torch without per-backend precision settings: float32 matmuls are IEEE
        yield
        return
    backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        backend.fp32_precision = saved


@contextlib.contextmanager
def integer_exact(model: nn.Module, plan: CompressionPlan) -> Iterator[nn.Module]:
    """The model in eval mode, its integer-kernel layers (per the plan) computing as onnxruntime does, within
    the block. The model is not trained within it: its weight codes are read once, on entry (a float32 copy
    of each integer-kernel weight, held for the block)."""
    model.eval()  # the deterministic gates: the weights cached below are the exported ones
    layers = wrapped_linears(model)
    patched = [layers[lp.name] for lp in plan.linears if lp.kernel == KERNEL_INTEGER]
    try:
        with torch.no_grad():
            for layer in patched:
                layer.forward = _exact_forward(layer)
        with ieee_float32_matmuls():
            yield model
    finally:
        for layer in patched:
            layer.__dict__.pop("forward", None)  # back to the class's forward
