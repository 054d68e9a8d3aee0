import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blora_export.config import BLoRAConfig, ConfigError
from blora_export.lora import GatedLoRALinear
from blora_export.sampled_linear import keep_probabilities, linear, sampled_weight_grad


def test_estimate_is_unbiased():
    """The mean of many estimates is within 5 standard errors of grad^T x in every element (standard errors
    from the estimator's own variance), a bar tight enough to catch a 5% scale bias."""
    torch.manual_seed(0)
    grad, x = torch.randn(128, 6), torch.randn(128, 5)
    grad[:4] *= 10  # a few large rows: taken exactly, as the pooled token's would be
    exact = grad.T @ x
    draws = 20000
    mean = torch.stack([sampled_weight_grad(grad, x, 0.25) for _ in range(draws)]).mean(0)
    keep = keep_probabilities(grad.norm(dim=1) * x.norm(dim=1), 32)
    variance = torch.einsum("n,ni,nj->ij", 1 / keep - 1, grad**2, x**2)
    standard_error = (variance / draws).sqrt()
    assert ((mean - exact).abs() / standard_error).max() < 5
    assert (0.05 * exact.abs() / standard_error).median() > 5


def test_keep_probabilities_sum_to_the_expected_rows():
    torch.manual_seed(0)
    weights = torch.rand(100)
    weights[:3] = 100.0  # capped at 1
    weights[90:] = 0.0  # never kept
    keep = keep_probabilities(weights, 20)
    assert torch.isclose(keep.sum(), torch.tensor(20.0))
    assert torch.equal(keep[:3], torch.ones(3)) and torch.equal(keep[90:], torch.zeros(10))
    ratio = keep[3:90] / weights[3:90]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # proportional to the weights below the cap


def test_rows_without_gradient_are_never_drawn():
    """Padding and unpooled tokens have zero gradient: with no more carrying rows than the sample's size the
    estimate is the exact product over them."""
    torch.manual_seed(0)
    grad, x = torch.zeros(32, 4), torch.randn(32, 3)
    grad[[7, 20]] = torch.randn(2, 4)
    assert torch.allclose(sampled_weight_grad(grad, x, 0.1), grad.T @ x)
    assert torch.equal(sampled_weight_grad(torch.zeros(32, 4), x, 0.1), torch.zeros(4, 3))


def test_non_finite_gradient_reaches_the_weight():
    grad, x = torch.randn(8, 4), torch.randn(8, 3)
    grad[2, 1] = float("nan")
    assert torch.isnan(sampled_weight_grad(grad, x, 0.25)).any()


def test_forward_input_and_bias_gradients_stay_exact():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = linear(x, w, b, 0.25)
    assert torch.equal(y, F.linear(x, w, b))
    y.square().sum().backward()
    sampled = (x.grad.clone(), b.grad.clone(), w.grad.clone())
    x.grad = w.grad = b.grad = None
    F.linear(x, w, b).square().sum().backward()
    assert torch.allclose(sampled[0], x.grad) and torch.allclose(sampled[1], b.grad)
    assert not torch.allclose(sampled[2], w.grad)  # the weight's is the estimate


def _grads(layer: GatedLoRALinear, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
    """One backward pass; the gradients of the named parameters."""
    layer.zero_grad(set_to_none=True)
    layer(x).square().sum().backward()
    params = dict(layer.named_parameters())
    return [params[n].grad.clone() for n in names]


def _weight_grad(layer: GatedLoRALinear, x: torch.Tensor) -> torch.Tensor:
    return _grads(layer, x, "weight_quantizer.log_hi")[0]


@pytest.mark.parametrize(("method", "adapted", "sampled"),
                         [("blora", False, True), ("blora", True, False), ("qat", False, False)])
def test_only_blora_frozen_weights_take_the_estimate(method, adapted, sampled):
    """A frozen W0's quantizer learns from the estimate; a merged weight (its gradient trains the adapter) and
    the QAT baseline keep the exact gradient."""
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(12, 10), BLoRAConfig(method=method), adapted=adapted)
    x = torch.randn(4, 32, 12)
    first, second = _weight_grad(layer, x), _weight_grad(layer, x)
    assert first.abs().sum() > 0
    assert torch.equal(first, second) != sampled


def test_unmerged_adapter_is_exact_while_its_base_weight_is_sampled():
    """Deployed unmerged, W0's quantizer takes the estimate; the adapter branch's gradients stay exact."""
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(12, 10), BLoRAConfig(deploy="adapter"), adapted=True)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 32, 12)
    names = ("lora_A", "lora_B", "weight_quantizer.log_hi")
    first, second = _grads(layer, x, *names), _grads(layer, x, *names)
    assert layer.weight_grad_fraction == BLoRAConfig().frozen_weight_grad_rows < 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].abs().sum() > 0 and first[1].abs().sum() > 0
    assert not torch.equal(first[2], second[2])


def test_fraction_one_is_the_exact_gradient():
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(12, 10), BLoRAConfig(frozen_weight_grad_rows=1.0), adapted=False)
    x = torch.randn(4, 32, 12)
    assert torch.equal(_weight_grad(layer, x), _weight_grad(layer, x))


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_fraction_must_be_a_share(value):
    with pytest.raises(ConfigError, match="frozen weight grad rows"):
        BLoRAConfig(frozen_weight_grad_rows=value).validate()
