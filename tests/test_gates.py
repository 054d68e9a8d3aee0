import math

import torch

from blora_export import gates


def test_samples_in_unit_interval_with_exact_zero_and_one_mass():
    torch.manual_seed(0)
    z = gates.sample(torch.zeros(200_000))
    assert z.min() >= 0 and z.max() <= 1
    p0, p1 = (z == 0).float().mean().item(), (z == 1).float().mean().item()
    # Both ends carry real probability mass (the stretch beyond [0, 1] is clamped).
    assert p0 > 0.05 and p1 > 0.05
    # Empirical P(z > 0) matches the closed form at log_alpha = 0.
    assert abs((1 - p0) - gates.prob_open(torch.tensor(0.0)).item()) < 0.01


def test_prob_open_formula():
    for la in (-3.0, -0.5, 0.0, 2.0):
        expected = 1 / (1 + math.exp(-(la - (2 / 3) * math.log(0.1 / 1.1))))
        assert abs(gates.prob_open(torch.tensor(la)).item() - expected) < 1e-6
    assert abs(gates.prob_open(torch.tensor(-1.5986)).item() - 0.5) < 1e-4


def test_empirical_prob_open_matches_formula_for_several_log_alphas():
    torch.manual_seed(1)
    for la in (-2.0, 1.0):
        z = gates.sample(torch.full((100_000,), la))
        assert abs((z > 0).float().mean().item() - gates.prob_open(torch.tensor(la)).item()) < 0.01


def test_open_threshold_at_minus_0_935():
    assert abs(gates.OPEN_THRESHOLD - (-0.935)) < 1e-3
    la = torch.tensor([-0.94, -0.93, 6.0, -6.0])
    assert gates.is_open(la).tolist() == [False, True, True, False]
    assert gates.deterministic(la).tolist() == [0.0, 1.0, 1.0, 0.0]
    # At the threshold P(z = 0) is exactly the closed probability 0.34.
    assert abs(1 - gates.prob_open(torch.tensor(gates.OPEN_THRESHOLD)).item() - 0.34) < 1e-6


def test_nested_count_stops_at_first_closed_gate():
    assert gates.nested_open_count(torch.tensor([5.0, 5.0, -5.0, 5.0])) == 2
    assert gates.nested_open_count(torch.tensor([-5.0, 5.0])) == 0
    assert gates.nested_open_count(torch.tensor([])) == 0


def test_straight_through_gate_is_the_test_time_value_with_the_gradient_of_p_open():
    la = torch.tensor([3.0, -1.2, -1.5], requires_grad=True)
    z = gates.straight_through(la)
    assert z.tolist() == [1.0, 0.0, 0.0]  # the deterministic rule: open iff log_alpha > -0.935
    z.sum().backward()
    p = gates.prob_open(la.detach())
    boundary = torch.tensor([1.0, 1.0, 0.0])  # the top open gate and the first closed one
    assert torch.allclose(la.grad, boundary * p * (1 - p))  # d P(z > 0) / d log_alpha


def test_only_the_boundary_of_a_chain_learns():
    la = torch.tensor([4.0, 2.0, -1.2, -1.5], requires_grad=True)
    assert gates.boundary(la).tolist() == [False, True, True, False]
    gates.chain_probabilities(la).sum().backward()
    assert la.grad.tolist()[0] == 0 and la.grad.tolist()[3] == 0 and la.grad[1] > 0 and la.grad[2] > 0
    assert gates.boundary(torch.tensor([3.0, 3.0])).tolist() == [False, True]  # all open: the top one
    assert gates.boundary(torch.tensor([-3.0, 3.0])).tolist() == [True, False]  # all closed: the first one


def test_hard_off_line_lies_below_the_test_time_threshold():
    # between them a gate is closed but alive (it still learns); at or below HARD_OFF it is dead
    assert gates.HARD_OFF < gates.INIT_CLOSED < gates.OPEN_THRESHOLD
