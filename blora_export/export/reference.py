"""The integer-exact reference: the PyTorch eval forward with each integer-kernel layer computed the way
onnxruntime's integer kernels compute it.

onnxruntime runs a layer with <= 8-bit weights behind a Q/DQ activation as MatMulIntegerToFloat: the codes'
products are accumulated exactly in int32, then multiplied by the float32 product of the two scales and the
bias added. A float matmul of the dequantized values (the plain eval forward) rounds each partial sum instead,
and quantized layers downstream amplify that: a value nudged across a rounding boundary moves a whole step.
Inside `integer_exact(model, plan)` those layers accumulate the same codes exactly (float64 holds the int32
sums without rounding), so the reference and onnxruntime differ only by the float order of what stays float
(LayerNorm, softmax, GELU, the attention products, weight-only layers).

The codes come from the training modules (the quantize function on the trained ranges), not from the export:
a faulty export cannot make its own reference agree with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..inject import wrapped_linears
from ..residual_quant import grid_quantize
from .plan import KERNEL_INTEGER, CompressionPlan


def _exact_forward(layer: nn.Module):
    """GatedLoRALinear.forward with the main product as int32 codes x codes, scaled once (float32)."""
    wq, aq = layer.weight_quantizer, layer.input_quantizer

    def forward(x: torch.Tensor) -> torch.Tensor:
        w_bits, a_bits = wq.effective_bits(), aq.effective_bits()
        a_low, a_high = aq.range_bounds()
        a_codes, a_scale, a_zero = grid_quantize(x, a_low, a_high, a_bits, bool(aq.signed))
        weight = layer.base.weight if layer.unmerged else layer.merged_weight()
        w_low, w_high = wq.range_bounds()
        w_codes, w_scale, _ = grid_quantize(weight, w_low, w_high, w_bits, bool(wq.signed))
        acc = (a_codes - a_zero).double() @ w_codes.double().T  # exact: |sums| < 2^53
        y = acc.float() * (a_scale * w_scale.reshape(-1))
        if layer.base.bias is not None:
            y = y + layer.base.bias
        if layer.unmerged and layer.max_rank:  # the fp32 branch of an unmerged adapter
            x_hat = (a_codes - a_zero) * a_scale
            y = y + F.linear(F.linear(x_hat, layer.lora_A) * (layer.rank_mask() * layer.lora_E),
                             layer.lora_B) * layer.scaling
        return y

    return forward


@contextlib.contextmanager
def integer_exact(model: nn.Module, plan: CompressionPlan) -> Iterator[nn.Module]:
    """The model, its integer-kernel layers (per the plan) computing as onnxruntime does, within the block."""
    layers = wrapped_linears(model)
    patched = [layers[lp.name] for lp in plan.linears if lp.kernel == KERNEL_INTEGER]
    for layer in patched:
        layer.forward = _exact_forward(layer)
    try:
        yield model
    finally:
        for layer in patched:
            del layer.forward  # back to the class's forward
