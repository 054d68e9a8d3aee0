import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blora_export import gates
from blora_export.config import QuantizerSpec
from blora_export.quantizer import BayesianBitsQuantizer
from blora_export.residual_quant import grid
from blora_export.ste import code_range, fake_quantize, quantize_codes

FORCE = 100.0  # |log_alpha| large enough that hard-concrete samples are exactly 0 or 1


def quantizer_at(bits: int, allowed=(2, 4, 8, 16, 32), range_shape=(), **spec) -> BayesianBitsQuantizer:
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=allowed, init_bits=bits, **spec), range_shape)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([FORCE if b <= bits else -FORCE for b in q.levels]))
    return q


def calibrated(q: BayesianBitsQuantizer, *batches: torch.Tensor) -> BayesianBitsQuantizer:
    q.calibrating = True
    for x in batches:
        q(x)
    q.calibrating = False
    q.finish_calibration()
    return q


def plain(x, q: BayesianBitsQuantizer, bits: int):
    low, high = q.range_bounds()
    scale, zero = grid(low, high, bits, bool(q.signed))
    return fake_quantize(x, scale, bits, bool(q.signed), zero)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.01, 50.0), spread=st.floats(0.1, 3.0),
       bits=st.sampled_from([2, 4, 8, 16]), kind=st.sampled_from(["symmetric", "affine", "from-zero"]),
       sampled=st.booleans())
def test_residual_sum_equals_plain_quantize_at_every_width(seed, beta, spread, bits, kind, sampled):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(257, generator=g) * beta * spread  # includes values beyond the range (clipped)
    if kind == "from-zero":
        x = x.abs()
    q = quantizer_at(bits, sampled=sampled)
    if kind == "symmetric":
        q.init_range_from(torch.tensor([-beta, beta]))
    else:
        calibrated(q, torch.tensor([-0.3 * beta if kind == "affine" else 0.0, beta]))
    q.train()
    nested = q(x)  # the training path: the nested residual sum with gates exactly 0/1
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
@pytest.mark.parametrize("kind", ["weight", "affine", "from-zero"])
def test_codes_fit_the_grid_and_use_all_of_it(bits, kind):
    x = torch.randn(10_000) * 3
    if kind == "from-zero":
        x = x.abs()
    if kind == "affine":
        x = torch.nn.functional.gelu(x)  # one-sided with a small negative tail
    q = BayesianBitsQuantizer(QuantizerSpec(init_bits=bits, calibration="maxabs"))
    q.init_range_from(x) if kind == "weight" else calibrated(q, x)
    assert bool(q.signed) == (kind == "weight") and bool(q.negative) == (kind == "affine")
    low, high = q.range_bounds()
    scale, zero = grid(low, high, bits, bool(q.signed))
    codes = quantize_codes(x, scale, bits, bool(q.signed), zero)
    qmin, qmax = code_range(bits, bool(q.signed))
    assert codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(codes, codes.round())
    if kind == "weight":  # symmetric: the larger magnitude reaches its end of the code range
        assert codes.abs().max() == qmax
    elif kind == "affine":  # affine: the grid is fitted to both ends
        assert codes.min() == qmin and codes.max() == qmax
    else:  # from zero: 0 is code 0, the largest value the top code
        assert float(zero.detach()) == 0 and codes.max() == qmax


def test_ste_gradients_reach_input_range_and_gates():
    torch.manual_seed(0)
    q = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8)), torch.randn(500) * 2)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([2.0, 2.0, -1.5, -1.5]))  # 8 bits; the 16-bit level closed but alive
    q.train()
    x = (torch.randn(500) * 2).requires_grad_(True)
    (q(x) * torch.randn(500)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert q.log_hi.grad.abs() > 0 and q.log_lo.grad.abs() > 0
    # the chain's boundary learns: the top open level (8 bits) and the first closed one (16 bits); the 4-bit level
    # cannot close before the 8-bit one has, nor the 32-bit one open before the 16-bit one
    grad = q.log_alpha.grad
    assert grad[1] != 0 and grad[2] != 0 and grad[0] == 0 and grad[3] == 0


@pytest.mark.parametrize("log_alpha", [[3.0, 3.0, -1.5, -1.5], [3.0, -1.5, 3.0, -1.5], [-1.5, 3.0, 3.0, 3.0],
                                       [3.0, 3.0, 3.0, 3.0], [-1.5, -1.5, -1.5, -1.5]])
def test_gate_gradients_computed_only_where_the_boundary_reaches_are_the_full_ones(log_alpha, monkeypatch):
    """The backward pass computes the levels of the mask entries the boundary gates reach
    (gates.boundary_reach); asking for every entry must give the same gradients."""
    torch.manual_seed(0)
    x, upstream = torch.randn(400) * 2, torch.randn(400)
    q = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8)), x)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor(log_alpha))
    q.train()
    grads = []
    for reach in (gates.boundary_reach, lambda _la: None):
        monkeypatch.setattr(gates, "boundary_reach", reach)
        q.zero_grad()
        (q(x) * upstream).sum().backward()
        grads.append(q.log_alpha.grad.clone())
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_hard_off_levels_are_skipped_and_learn_nothing():
    q = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8)), torch.randn(500))
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([2.0, 2.0, gates.HARD_OFF - 0.5, -1.5]))
    q.train()
    bits, mask, _ = q._training_mask()
    assert bits == (2, 4, 8) and mask.tolist() == [1.0, 1.0]  # the 16- and 32-bit levels are not computed
    q(torch.randn(100)).sum().backward()
    assert q.log_alpha.grad[2:].abs().sum() == 0 and q.log_alpha.grad[:2].abs().sum() > 0
    q.hard_off = False
    assert q._training_mask()[0] == (2, 4, 8, 16, 32)


def test_deterministic_training_runs_the_exported_grid_sampling_does_not():
    torch.manual_seed(0)
    x = torch.randn(300)
    q = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8)), x)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([3.0, 3.0, -1.5, -1.5]))
    q.eval()
    exported = q(x)
    q.train()
    assert all(torch.equal(q(x), exported) for _ in range(20))
    q.sampled = True  # at log_alpha 3 a sample is exactly 1 only ~80% of the time: noise the export never has
    assert not all(torch.equal(q(x), exported) for _ in range(20))


def test_clipped_inputs_give_gradient_to_the_range_only():
    q = quantizer_at(8)
    q.init_range_from(torch.tensor([1.0]))
    q.eval()
    x = torch.tensor([5.0, 0.3], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]
    # d(x_hat)/d beta: qmax * 2/255 for the clipped value plus (q - x/s) * 2/255 for the other; beta = exp(log_hi)
    # relative to the reference 1.0, so d/d log_hi = beta * d/d beta
    ds = 2 / 255
    assert q.log_hi.grad.item() == pytest.approx(ds * (127 + (38 - 38.25)), abs=1e-6)


def test_relative_and_absolute_ranges_start_at_the_same_grid():
    x = torch.randn(1000) * 4 + 1
    rel = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8)), x)
    ab = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8, relative_range=False)), x)
    assert [float(t.detach()) for t in rel.range_bounds()] == pytest.approx(
        [float(t.detach()) for t in ab.range_bounds()], rel=1e-6)
    # the reference scale is the range
    assert float(rel.reference) == pytest.approx(float(rel.range_bounds()[1].detach()))


def test_mse_calibration_clips_outliers_maxabs_keeps_them():
    torch.manual_seed(0)
    x = torch.randn(20_000)
    x[0] = 60.0  # one outlier
    mse = calibrated(BayesianBitsQuantizer(QuantizerSpec(allowed=(4, 8, 16, 32), init_bits=4)), x)
    maxabs = calibrated(BayesianBitsQuantizer(QuantizerSpec(allowed=(4, 8, 16, 32), init_bits=4,
                                                            calibration="maxabs")), x)
    with torch.no_grad():
        assert float(maxabs.range_bounds()[1]) == pytest.approx(60.0)
        assert float(mse.range_bounds()[1]) < 30.0

    def error(q):
        with torch.no_grad():
            return float(((plain(x, q, 4) - x) ** 2).mean())

    assert error(mse) < error(maxabs)


def test_symmetric_activations_when_affine_is_off():
    q = calibrated(BayesianBitsQuantizer(QuantizerSpec(init_bits=8, affine=False, calibration="maxabs")),
                   torch.tensor([-0.2, 3.0]))
    assert bool(q.signed) and [float(t.detach()) for t in q.range_bounds()] == pytest.approx([-3.0, 3.0])


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


def test_fixed_width_quantizer_has_no_learned_gates():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(8,), init_bits=8, learn=False))
    assert q.levels == [] and q.effective_bits() == 8
    assert float(q.expected_bits()) == 8.0
    assert not q.log_alpha.requires_grad


def test_calibration_uses_every_batch():
    q = BayesianBitsQuantizer(QuantizerSpec(allowed=(4, 8, 16, 32), init_bits=8, calibration="maxabs"))
    calibrated(q, torch.tensor([0.5, 1.0]), torch.tensor([3.0, 0.1]), torch.tensor([2.0]))
    assert [float(t.detach()) for t in q.range_bounds()] == [0.0, 3.0] and not bool(q.signed) and not bool(q.negative)
    assert bool(q.initialized)


def test_per_channel_weight_range():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    q = BayesianBitsQuantizer(QuantizerSpec(init_bits=4), (2, 1))
    q.init_range_from(w)
    assert q.range_bounds()[1].flatten().tolist() == [2.0, 0.5]
    q.eval()
    out = q(w)
    assert out[0, 1].item() == pytest.approx(-2.0 * 7 / 7.5, rel=1e-6)  # -beta lands on the last code, -7 * 2*2/15
    assert math.isclose(float(q.scale(4)[0]), 4 / 15, rel_tol=1e-6)


def test_least_error_ranges_clip_heavy_tailed_rows_and_never_do_worse_than_max_abs():
    torch.manual_seed(0)
    table = torch.randn(50, 256)
    # heavy-tailed rows (like word embeddings): a 4-bit grid over max |x| wastes codes on a few values
    table[:10] = torch.distributions.Laplace(0.0, 1.0).sample((10, 256))
    errors = []
    for least_error in (False, True):
        q = BayesianBitsQuantizer(QuantizerSpec(allowed=(4,), init_bits=4, learn=False, relative_range=False),
                                  (50, 1), learn_range=False)
        q.init_range_from(table, least_error=least_error)
        q.eval()
        errors.append(((q(table) - table) ** 2).sum(1))
    plain, searched = errors
    assert (searched <= plain + 1e-6).all() and searched[:10].sum() < 0.85 * plain[:10].sum()
