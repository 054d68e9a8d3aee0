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
    upstream = torch.randn(6, 40)
    results = []
    for fn in (residual_fake_quantize, reference):
        x, beta, mask = (t.clone().requires_grad_(True) for t in (x0, beta0, mask0))
        out = fn(x, beta, mask, bits, signed)
        (out * upstream).sum().backward()
        results.append((out, x.grad, beta.grad, mask.grad))
    (out_a, dx_a, db_a, dm_a), (out_b, dx_b, db_b, dm_b) = results
    assert torch.equal(out_a, out_b)
    assert torch.allclose(dx_a, dx_b, atol=1e-6)
    assert torch.allclose(db_a, db_b, atol=1e-4, rtol=1e-4)
    if len(bits) > 1:
        assert torch.allclose(dm_a, dm_b, atol=1e-4, rtol=1e-5)
        assert dm_a.abs().sum() > 0
    assert db_a.abs().sum() > 0  # ranges learn
