"""The integer-exact reference's product: exact int32-style sums of 8-bit codes, in float32 where it can."""

import torch

from blora_export.export.reference import exact_code_product


def _codes(shape, low, high, generator):
    return torch.randint(low, high + 1, shape, generator=generator).float()


def test_large_same_sign_sums_are_exact_where_one_float32_product_rounds():
    g = torch.Generator().manual_seed(0)
    a = _codes((4, 16, 1536), 200, 255, g)  # activation codes minus zero point, near the top of the 8-bit range
    w = _codes((64, 1536), 100, 127, g)  # 8-bit weight codes of one sign: sums near 5e7 > 2^24
    exact = a.long() @ w.long().T
    assert not torch.equal((a @ w.T).double(), exact.double())  # a single float32 product rounds these sums
    got = exact_code_product(a, w)
    assert torch.equal(got, exact.double())


def test_short_inner_dimension_stays_float32_and_exact():
    g = torch.Generator().manual_seed(1)
    a = _codes((2, 8, 384), -255, 255, g)
    w = _codes((32, 384), -127, 127, g)
    got = exact_code_product(a, w)
    assert got.dtype == torch.float32  # 384 x 255 x 127 < 2^24: one float32 product holds every sum exactly
    assert torch.equal(got.long(), a.long() @ w.long().T)


def test_empty_and_all_zero_inputs():
    w = torch.ones(3, 5)
    assert exact_code_product(torch.zeros(0, 5), w).shape == (0, 3)
    assert torch.equal(exact_code_product(torch.zeros(2, 5), w), torch.zeros(2, 3))
