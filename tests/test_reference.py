"""The integer-exact reference's product: exact int32-style sums of 8-bit codes, in float32 where it can."""

import math

import pytest
import torch

from blora_export.export.reference import exact_code_product, ieee_float32_matmuls


def _codes(shape, low, high, generator):
    return torch.randint(low, high + 1, shape, generator=generator).float()


def test_large_same_sign_sums_are_exact_where_one_float32_product_rounds():
    g = torch.Generator().manual_seed(0)
    a = _codes((4, 16, 1536), 200, 255, g)  # activation codes minus zero point, near the top of the 8-bit range
    w = _codes((64, 1536), 100, 127, g)  # 8-bit weight codes of one sign: sums near 5e7 > 2^24
    exact = a.long() @ w.long().T
    assert not torch.equal((a @ w.T).double(), exact.double())  # a single float32 product rounds these sums
    assert torch.equal(exact_code_product(a, w), exact.double())


def test_mixed_signs_two_dimensional_input_and_the_exact_chunk_boundary():
    g = torch.Generator().manual_seed(2)
    a, w = _codes((37, 1536), -255, 255, g), _codes((48, 1536), -127, 127, g)
    assert torch.equal(exact_code_product(a, w), (a.long() @ w.long().T).double())
    # 128 x 128 = 2^14 per product: chunks of 1024 sum to exactly 2^24, the largest integer the rule allows
    a, w = torch.full((3, 2048), 128.0), torch.full((2, 2048), 128.0)
    assert torch.equal(exact_code_product(a, w), torch.full((3, 2), 2.0**25, dtype=torch.float64))


def test_short_inner_dimension_stays_float32():
    g = torch.Generator().manual_seed(1)
    a, w = _codes((2, 8, 384), -255, 255, g), _codes((32, 384), -127, 127, g)
    got = exact_code_product(a, w)
    assert got.dtype == torch.float32  # 384 x 255 x 127 < 2^24: one float32 product holds every sum exactly
    assert torch.equal(got.long(), a.long() @ w.long().T)


def test_empty_zero_and_non_finite_inputs():
    w = torch.ones(3, 5)
    assert exact_code_product(torch.zeros(0, 5), w).shape == (0, 3)
    assert torch.equal(exact_code_product(torch.zeros(2, 5), w), torch.zeros(2, 3))
    a = torch.ones(2, 5)
    a[0, 1] = math.nan
    got = exact_code_product(a, w)  # reaches the logits as NaN, where verification refuses it
    assert got[0].isnan().all() and torch.equal(got[1], torch.full((3,), 5.0, dtype=torch.float64))


@pytest.mark.skipif(getattr(torch.backends.mkldnn.matmul, "fp32_precision", None) is None,
                    reason="this torch has no per-backend matmul precision")
def test_ieee_block_restores_the_matmul_precision_after_an_error():
    backend = torch.backends.mkldnn.matmul
    saved = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        with pytest.raises(ValueError), ieee_float32_matmuls():
            assert backend.fp32_precision == "ieee"
            raise ValueError
        assert backend.fp32_precision == "bf16"
    finally:
        backend.fp32_precision = saved
