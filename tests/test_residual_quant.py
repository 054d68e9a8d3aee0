"""The fused residual fake-quantization must match the same maths written with plain autograd ops."""

import pytest
import torch

from blora_export.residual_quant import bounds, residual_fake_quantize
from blora_export.ste import FLOAT_BITS, clamp_range, fake_quantize, step_size


def reference(x, beta, mask, bits, signed):
    def grid(b):
        if b >= FLOAT_BITS:
            return x
        low, high, width = bounds(beta, signed)
        return fake_quantize(clamp_range(x, low, high), step_size(width, b), b, signed)

    out = previous = grid(bits[0])
    for i, b in enumerate(bits[1:]):
        current = grid(b)
        out = out + mask[i] * (current - previous)
        previous = current
    return out


@pytest.mark.parametrize("bits", [(2, 4, 8, 16, 32), (4, 8, 16), (8,), (2, 4)])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_values_and_gradients_match_autograd_reference(bits, signed, per_channel):
    torch.manual_seed(0)
    x0 = torch.randn(6, 40) * 2
    if not signed:
        x0 = x0.abs()
    beta0 = torch.rand(6, 1) + 0.5 if per_channel else torch.tensor(1.3)
    mask0 = torch.rand(len(bits) - 1)
    if len(bits) > 2:  # hard-concrete samples are often exactly 1 or 0: skipped terms must not change anything
        mask0[0] = 1.0
        mask0[-1] = 0.0
    upstream = torch.randn(6, 40)
    results = []
    for fn in (residual_fake_quantize, reference):
        x, beta, mask = (t.clone().requires_grad_(True) for t in (x0, beta0, mask0))
        out = fn(x, beta, mask, bits, signed)
        (out * upstream).sum().backward()
        results.append((out, x.grad, beta.grad, mask.grad))
    (out_a, dx_a, db_a, dm_a), (out_b, dx_b, db_b, dm_b) = results
    # sum_j c_j x_hat_j vs the telescoped form: the same sum, rounded in another order
    assert torch.allclose(out_a, out_b, atol=1e-6, rtol=1e-6)
    assert torch.allclose(dx_a, dx_b, atol=1e-6)
    assert torch.allclose(db_a, db_b, atol=1e-4, rtol=1e-4)
    if len(bits) > 1:
        assert torch.allclose(dm_a, dm_b, atol=1e-4, rtol=1e-5)
        assert dm_a.abs().sum() > 0
    assert db_a.abs().sum() > 0  # ranges learn


@pytest.mark.parametrize("signed", [True, False])
def test_one_hot_mask_gives_the_plain_grid_bitwise(signed):
    """Gates exactly 0 or 1 select one width: the output is that width's quantizer output, bit for bit."""
    torch.manual_seed(1)
    bits = (2, 4, 8, 16, 32)
    x = torch.randn(5, 33) * 3
    x = x if signed else x.abs()
    beta = torch.rand(5, 1) + 0.5
    low, high, width = bounds(beta, signed)
    for open_levels in range(len(bits)):
        mask = torch.tensor([1.0] * open_levels + [0.0] * (len(bits) - 1 - open_levels))
        b = bits[open_levels]
        expected = x if b >= FLOAT_BITS else fake_quantize(clamp_range(x, low, high), step_size(width, b), b, signed)
        assert torch.equal(residual_fake_quantize(x, beta, mask, bits, signed), expected)
