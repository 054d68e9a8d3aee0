import torch

from blora_export.ste import code_range, fake_quantize, quantize_codes, round_ste, step_size


def test_round_is_half_even_with_identity_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.4], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 0.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 6


def test_code_ranges():
    assert code_range(8, True) == (-127, 127)
    assert code_range(2, True) == (-1, 1)
    assert code_range(4, False) == (0, 15)


def test_step_sizes_follow_the_nested_recursion():
    r = torch.tensor(2.0)
    s = {b: step_size(r, b) for b in (2, 4, 8, 16)}
    assert torch.isclose(s[2], r / 3)
    for b in (2, 4, 8):
        assert torch.isclose(s[2 * b], s[b] / (2**b + 1))


def test_quantize_clamps_to_code_range_and_32_bits_is_identity():
    x = torch.tensor([-10.0, -0.26, 0.1, 10.0])
    q = quantize_codes(x, torch.tensor(0.1), 4, signed=True)
    assert q.tolist() == [-7.0, -3.0, 1.0, 7.0]
    assert torch.equal(fake_quantize(x, torch.tensor(0.1), 32, True), x)
