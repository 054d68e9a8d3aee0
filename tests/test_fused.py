"""The compiled quantizer kernels give the eager ones' values: the forward bit for bit (the exported model is
what training saw), the gradients to float rounding."""

import shutil

import pytest
import torch

from blora_export import fused
from blora_export.config import QuantizerSpec
from blora_export.quantizer import BayesianBitsQuantizer
from blora_export.residual_quant import grid
from blora_export.ste import code_range, fake_quantize

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                reason="torch.compile needs a C++ compiler")


@pytest.fixture
def compiled():
    fused.set_enabled(True)
    yield
    fused.set_enabled(False)


def _grid(x, low, high, bits, signed):
    qmin, qmax = code_range(bits, signed)
    return (*grid(low, high, bits, signed), x.new_tensor(float(qmin)), x.new_tensor(float(qmax)))


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("signed", [True, False])
def test_compiled_level_is_the_quantize_function_bitwise(bits, signed, compiled):
    torch.manual_seed(bits)
    for x, high in ((torch.randn(96, 40) * 3, torch.rand(96, 1) + 0.2),  # per output channel
                    (torch.randn(4, 33, 50) * 5, torch.tensor(7.3))):  # per tensor
        low = -high if signed else -0.21 * high
        args = _grid(x, low, high, bits, signed)
        assert torch.equal(fused.level(x, *args), fake_quantize(x, args[0], bits, signed, args[1]))


@pytest.mark.parametrize("signed", [True, False])
def test_quantizer_gradients_compiled_match_eager(signed):
    torch.manual_seed(0)
    x0, upstream = torch.randn(64, 48) * 2, torch.randn(64, 48)
    spec = QuantizerSpec(init_bits=8, affine=not signed)
    q = BayesianBitsQuantizer(spec, (64, 1) if signed else ())
    if signed:
        q.init_range_from(x0)
    else:
        q.calibrating = True
        q(x0)
        q.calibrating = False
        q.finish_calibration()
    q.train()
    results = []
    for enabled in (False, True):
        fused.set_enabled(enabled)
        q.zero_grad()
        x = x0.clone().requires_grad_(True)
        out = q(x)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad, q.log_hi.grad, q.log_alpha.grad))
    fused.set_enabled(False)
    (out_e, dx_e, dh_e, da_e), (out_c, dx_c, dh_c, da_c) = results
    assert torch.equal(out_e, out_c) and torch.equal(dx_e, dx_c)
    assert torch.allclose(dh_e, dh_c, rtol=1e-4, atol=1e-6) and dh_e.abs().sum() > 0
    assert torch.allclose(da_e, da_c, rtol=1e-4, atol=1e-6) and da_e.abs().sum() > 0


def test_eager_block_runs_uncompiled_and_restores_the_setting(compiled):
    x, high = torch.randn(8, 16), torch.rand(8, 1) + 0.5
    args = _grid(x, -high, high, 4, True)
    with fused.eager():
        assert not fused.enabled()
        inside = fused.level(x, *args)
    assert fused.enabled()
    assert torch.equal(inside, fused.level(x, *args))
