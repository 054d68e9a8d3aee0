"""A linear product whose weight gradient is a sampled estimate: for the frozen weights of quantized layers.

A frozen weight W0 still needs dL/dW_q = g^T x (tokens x out by tokens x in) in training: its quantizer's range
and gates learn from it elementwise. That product is as large as the forward pass, and PEFT's LoRA does not
compute it. It is estimated from an expected k of the token rows, each kept independently with probability
pi_n = min(1, c |g_n| |x_n|) (c such that the pi_n sum to k) and weighted 1 / pi_n: unbiased, and among such
samplings the one of least variance (the norm-proportional rule of Drineas, Kannan and Mahoney 2006, "Fast
Monte Carlo algorithms for matrices I", with the largest rows taken exactly). Rows without gradient (padding,
and every token but the pooled one in the last layer) are never kept; when no more than k rows carry one, the
estimate is the exact product over them. Forward values and the input and bias gradients stay exact, so each
step's adapter, head and activation-quantizer gradients are the exact path's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _SampledWeightGradLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, fraction):
        if torch.is_autocast_enabled(x.device.type):  # save what the product uses (half the memory of fp32)
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.fraction = fraction
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = sampled_weight_grad(grad, x, ctx.fraction) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def keep_probabilities(weights: torch.Tensor, expected: int) -> torch.Tensor:
    """pi_n = min(1, c w_n) with sum pi_n = expected (or 1 for every w_n > 0 when no more rows than that)."""
    carrying = weights > 0
    if int(carrying.sum()) <= expected:
        return carrying.to(weights.dtype)
    w = weights.sort(descending=True).values
    tail = w.flip(0).cumsum(0).flip(0)  # tail[m] = sum of w[m:]
    capped = torch.arange(expected, device=w.device)  # m rows taken exactly, c = (expected - m) / tail[m]
    c = (expected - capped) / tail[:expected]
    first = int(torch.nonzero(c * w[:expected] <= 1)[0])  # exists: at m = expected - 1, c w[m] <= 1
    return torch.clamp(c[first] * weights, max=1.0)


def sampled_weight_grad(grad: torch.Tensor, x: torch.Tensor, fraction: float) -> torch.Tensor:
    """An unbiased estimate of grad^T x (both rows x features) from an expected ceil(fraction * rows) of the rows."""
    weights = (torch.linalg.vector_norm(grad, dim=1, dtype=torch.float32)
               * torch.linalg.vector_norm(x, dim=1, dtype=torch.float32))
    if not bool(torch.isfinite(weights).all()):  # no sample to draw: let the inf/NaN reach the weight's gradient
        return grad.T @ x
    keep = keep_probabilities(weights, math.ceil(fraction * grad.shape[0]))
    rows = torch.nonzero(torch.rand_like(keep) < keep).squeeze(1)
    scaled = (grad[rows].float() / keep[rows, None]).to(grad.dtype)
    return scaled.T @ x[rows]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, weight_grad_fraction: float):
    """F.linear; while `weight` needs a gradient and `weight_grad_fraction` < 1, that gradient is the sampled
    estimate from that fraction of the token rows."""
    if weight_grad_fraction >= 1.0 or not (torch.is_grad_enabled() and weight.requires_grad):
        return F.linear(x, weight, bias)
    # 2-D inside the Function and reshaped outside it, so the output is no view created in a custom Function
    # (models that permute and modify it in place, like DeBERTa, need autograd's own view tracking)
    rows = _SampledWeightGradLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, weight_grad_fraction)
    return rows.view(*x.shape[:-1], weight.shape[0])
