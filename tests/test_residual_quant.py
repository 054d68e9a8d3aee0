"""The fused residual fake-quantization must match the same maths written with plain autograd ops."""

import pytest
import torch

from blora_export.residual_quant import grid, residual_fake_quantize
from blora_export.ste import FLOAT_BITS, code_range, fake_quantize, round_ste


def reference(x, low, high, mask, bits, signed):
    """The nested sum from autograd ops: round and the zero point straight-through."""
    def level(b):
        if b >= FLOAT_BITS:
            return x
        scale = (high - low) / (2**b - 1)
        qmin, qmax = code_range(b, signed)
        zero = torch.zeros_like(scale) if signed else torch.clamp(round_ste(-low / scale), 0, qmax)
        return (torch.clamp(round_ste(x / scale) + zero, qmin, qmax) - zero) * scale

    out = previous = level(bits[0])
    for i, b in enumerate(bits[1:]):
        current = level(b)
        out = out + mask[i] * (current - previous)
        previous = current
    return out


@pytest.mark.parametrize("bits", [(2, 4, 8, 16, 32), (4, 8, 16), (8,), (2, 4)])
@pytest.mark.parametrize("kind", ["symmetric", "affine", "from-zero"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_values_and_gradients_match_autograd_reference(bits, kind, per_channel):
    torch.manual_seed(0)
    signed = kind == "symmetric"
    x0 = torch.randn(6, 40) * 2
    high0 = torch.rand(6, 1) + 0.5 if per_channel else torch.tensor(1.3)
    low0 = -high0 if signed else (-0.4 * high0 if kind == "affine" else torch.zeros_like(high0))
    mask0 = torch.rand(len(bits) - 1)
    if len(bits) > 2:  # gates are often exactly 1 or 0: skipped terms must not change anything
        mask0[0] = 1.0
        mask0[-1] = 0.0
    upstream = torch.randn(6, 40)
    results = []
    for fn in (residual_fake_quantize, reference):
        x, high, mask = (t.clone().requires_grad_(True) for t in (x0, high0, mask0))
        low = -high if signed else low0.clone().requires_grad_(kind == "affine")
        out = fn(x, low, high, mask, bits, signed)
        (out * upstream).sum().backward()
        results.append((out, x.grad, high.grad, low.grad if kind == "affine" else None, mask.grad))
    (out_a, dx_a, dh_a, dl_a, dm_a), (out_b, dx_b, dh_b, dl_b, dm_b) = results
    # sum_j c_j x_hat_j vs the telescoped form: the same sum, rounded in another order
    assert torch.allclose(out_a, out_b, atol=1e-6, rtol=1e-6)
    assert torch.allclose(dx_a, dx_b, atol=1e-6)
    assert torch.allclose(dh_a, dh_b, atol=1e-4, rtol=1e-4)
    if kind == "affine":
        assert torch.allclose(dl_a, dl_b, atol=1e-4, rtol=1e-4) and dl_a.abs().sum() > 0
    if len(bits) > 1:
        assert torch.allclose(dm_a, dm_b, atol=1e-4, rtol=1e-5)
        assert dm_a.abs().sum() > 0
    assert dh_a.abs().sum() > 0  # ranges learn


@pytest.mark.parametrize("signed", [True, False])
def test_one_hot_mask_gives_the_plain_grid_bitwise(signed):
    """Gates exactly 0 or 1 select one width: the output is that width's quantizer output, bit for bit."""
    torch.manual_seed(1)
    bits = (2, 4, 8, 16, 32)
    x = torch.randn(5, 33) * 3
    high = torch.rand(5, 1) + 0.5
    low = -high if signed else -0.3 * high
    for open_levels in range(len(bits)):
        mask = torch.tensor([1.0] * open_levels + [0.0] * (len(bits) - 1 - open_levels))
        b = bits[open_levels]
        if b >= FLOAT_BITS:
            expected = x
        else:
            scale, zero = grid(low, high, b, signed)
            expected = fake_quantize(x, scale, b, signed, zero)
        assert torch.equal(residual_fake_quantize(x, low, high, mask, bits, signed), expected)


def test_affine_grid_puts_zero_on_a_code_and_spans_the_range():
    low, high = torch.tensor(-0.17), torch.tensor(9.0)  # a GELU output: one-sided
    scale, zero = grid(low, high, 8, signed=False)
    assert 0 < float(zero) < 10 and float(zero) == round(0.17 / float(scale))
    x = torch.linspace(-0.17, 9.0, 1000)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    assert q.min() == 0 and q.max() == 255  # the whole grid is used (a symmetric one would waste half)
    assert fake_quantize(torch.zeros(1), scale, 8, False, zero).item() == 0.0  # zero is exact
