import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blora_export import gates
from blora_export.config import QuantizerSpec
from blora_export.quantizer import BayesianBitsQuantizer
from blora_export.ste import clamp_range, code_range, fake_quantize, quantize_codes, step_size

FORCE = 100.0  # |log_alpha| large enough that hard-concrete samples are exactly 0 or 1


def quantizer_at(bits: int, allowed=(2, 4, 8, 16, 32), range_shape=()) -> BayesianBitsQuantizer:
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=allowed, init_bits=bits), range_shape)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([FORCE if b <= bits else -FORCE for b in q.levels]))
    return q


def plain(x, q: BayesianBitsQuantizer, bits: int):
    low, high, width = q.range_bounds()
    return fake_quantize(clamp_range(x, low, high), step_size(width, bits), bits, bool(q.signed))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.01, 50.0), spread=st.floats(0.1, 3.0),
       bits=st.sampled_from([2, 4, 8, 16]), signed=st.booleans())
def test_residual_sum_equals_plain_quantize_at_every_width(seed, beta, spread, bits, signed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(257, generator=g) * beta * spread  # includes values beyond the range (clipped)
    if not signed:
        x = x.abs()
    q = quantizer_at(bits)
    with torch.no_grad():
        q.beta.fill_(beta)
        q.signed.fill_(signed)
    q.train()
    nested = q(x)  # stochastic path: the nested residual sum with gates forced to exact 0/1
    expected = plain(x, q, bits)
    assert torch.allclose(nested, expected, rtol=0, atol=1e-6 * beta)
    q.eval()
    assert torch.equal(q(x), expected)  # the deterministic path IS the plain quantize function


def test_all_gates_open_is_identity_at_32_bits():
    q = quantizer_at(32)
    x = torch.randn(100) * 5
    q.train()
    assert torch.allclose(q(x), x, atol=1e-6)
    q.eval()
    assert torch.equal(q(x), x)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("signed", [True, False])
def test_codes_fit_the_signed_and_unsigned_ranges(bits, signed):
    x = torch.randn(10_000) * 3
    if not signed:
        x = x.abs()
    q = BayesianBitsQuantizer(QuantizerSpec(init_bits=bits))
    q.init_range_from(x)
    assert bool(q.signed) == signed
    low, high, width = q.range_bounds()
    codes = quantize_codes(clamp_range(x, low, high), step_size(width, bits), bits, signed)
    qmin, qmax = code_range(bits, signed)
    assert codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(codes, codes.round())
    # the grid is actually used: both ends of the code range are reached
    assert codes.abs().max() == qmax


def test_ste_gradients_reach_input_range_and_gates():
    torch.manual_seed(0)
    q = BayesianBitsQuantizer(QuantizerSpec(init_bits=8))
    q.init_range_from(torch.ones(1) * 2)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0]))  # stochastic, mostly open gates
    q.train()
    x = (torch.randn(500) * 2).requires_grad_(True)
    target = torch.randn(500)
    for _ in range(20):  # one gate sample per pass; a sample clamped to exactly 0/1 carries no gradient
        (q(x) * target).sum().backward()
    assert x.grad.abs().sum() > 0
    assert q.beta.grad is not None and q.beta.grad.abs() > 0
    assert q.log_alpha.grad is not None and (q.log_alpha.grad != 0).all()


def test_clipped_inputs_give_gradient_to_the_range_only():
    q = quantizer_at(8)
    with torch.no_grad():
        q.beta.fill_(1.0)
    q.eval()
    x = torch.tensor([5.0, 0.3], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]
    # LSQ-style: d(s * round(x / s))/d beta = 1 for the clipped value, plus (q - x/s) ds/dbeta for both.
    ds = 2 / 255
    assert q.beta.grad.item() == pytest.approx(1 + ds * ((127 - 127.5) + (38 - 38.25)), abs=1e-6)


def test_effective_and_expected_bits():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(4, 8, 16, 32), init_bits=8))
    assert q.levels == [8, 16, 32]
    assert q.effective_bits() == 8
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([5.0, 5.0, -5.0]))
    assert q.effective_bits() == 16
    p = gates.prob_open(q.log_alpha)
    expected = 4 + 4 * p[0] + 8 * p[0] * p[1] + 16 * p[0] * p[1] * p[2]
    assert torch.allclose(q.expected_bits(), expected)


def test_regularizer_against_hand_computation():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(2, 4, 8, 16, 32), init_bits=8))
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([1.0, 0.0, -1.0, -2.0]))
    mu, fraction = 0.1, 0.5
    p = gates.prob_open(q.log_alpha).tolist()
    hand = mu * fraction * (4 * p[0] + 8 * p[0] * p[1] + 16 * p[0] * p[1] * p[2] + 32 * p[0] * p[1] * p[2] * p[3])
    assert q.regularizer(fraction, mu).item() == pytest.approx(hand, rel=1e-6)


def test_fixed_width_quantizer_has_no_regularizer_and_no_learned_gates():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(8,), init_bits=8, learn=False))
    assert q.levels == [] and q.effective_bits() == 8
    assert q.regularizer(1.0, 1.0).item() == 0.0
    assert not q.log_alpha.requires_grad


def test_calibration_uses_every_batch():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(4, 8, 16, 32), init_bits=8))
    q.calibrating = True
    q(torch.tensor([0.5, 1.0]))
    q(torch.tensor([3.0, 0.1]))
    q(torch.tensor([2.0]))
    q.calibrating = False
    q.finish_calibration()
    assert q.beta.item() == 3.0 and not bool(q.signed)
    assert bool(q.initialized)


def test_per_channel_weight_range():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    q = BayesianBitsQuantizer(QuantizerSpec(init_bits=4), (2, 1))
    q.init_range_from(w)
    assert q.beta.flatten().tolist() == [2.0, 0.5]
    q.eval()
    out = q(w)
    assert out[0, 1].item() == pytest.approx(-2.0 * 7 / 7.5, rel=1e-6)  # -beta lands on the last code, -7 * 2*2/15
