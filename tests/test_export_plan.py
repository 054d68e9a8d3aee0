"""The compression plan (gates read once, containers per profile) and the merge (exact, pruned, snapped)."""

import dataclasses

import pytest
import torch
from export_support import checkpoint

from blora_export.checkpoint import load_checkpoint
from blora_export.export import options
from blora_export.export.merge import build_float_model, merge_weight
from blora_export.export.plan import KERNEL_FLOAT, KERNEL_FOLDED, KERNEL_INTEGER, PlanError, make_plan
from blora_export.inject import wrapped_embeddings, wrapped_linears
from blora_export.testing import TEST_RANK_GATES, TEST_WIDTHS


def _load(model_type="bert", method="blora"):
    return load_checkpoint(checkpoint(model_type, method))


def _plan(model, meta, profile="speed", opset=None, kernel="fast"):
    return make_plan(model, meta.quantized, meta.adapted, meta.profile, meta.config.method, profile, opset, kernel)


@pytest.fixture(scope="module")
def bert():
    return _load("bert")


def test_plan_reads_the_deterministic_ranks_and_widths(bert):
    model, meta = bert
    plan = _plan(model, meta)
    assert plan.quantized == meta.quantized and plan.adapted == meta.adapted
    ranks = []
    for i, name in enumerate(meta.quantized):
        lp = plan.linear(name)
        assert (lp.weight.bits, lp.act.bits) == TEST_WIDTHS[i]
        if lp.adapted:
            layer = wrapped_linears(model)[name]
            assert lp.kept == tuple(range(layer.deterministic_rank()))
            ranks.append(lp.rank)
    # Nested gates: ranks 4, 2, 1 (first gate closed although later ones are open), 3, ...
    expected = [1 + next((k for k, g in enumerate(gs) if g < 0), len(gs)) for gs in TEST_RANK_GATES]
    assert ranks == [expected[i % len(expected)] for i in range(len(ranks))]
    assert {1, 2, 3, 4} <= set(ranks)
    head = [lp for lp in plan.linears if lp.role == "float"]
    assert {lp.name for lp in head} == {"bert.pooler.dense", "classifier"}
    assert all((lp.weight.bits, lp.act.bits, lp.kernel) == (32, 32, KERNEL_FLOAT) for lp in head)
    assert [e.bits for e in plan.embeddings] == [8, 8, 8]


def test_plan_is_frozen_plain_data(bert):
    plan = _plan(*bert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.linears[0].weight.bits = 4
    d = plan.to_dict()
    assert isinstance(d["linears"][0]["weight"]["scale"], tuple | list)


def _representations(plan, meta):
    return {TEST_WIDTHS[i]: (plan.linear(n).weight.container, plan.linear(n).weight.zero_point,
                             plan.linear(n).weight.delivery, plan.linear(n).act.mode, plan.linear(n).kernel)
            for i, n in enumerate(meta.quantized)}


def test_speed_profile_containers(bert):
    model, meta = bert
    plan = _plan(model, meta, "speed")
    assert plan.opset == 25  # a weight-only 2-bit layer is stored as packed int2
    rep = _representations(plan, meta)
    assert rep[(8, 8)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)  # the fast u8s8 kernel
    assert rep[(8, 4)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)
    assert rep[(4, 8)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)
    assert rep[(2, 8)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)
    assert rep[(4, 4)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)
    assert rep[(16, 8)] == ("int16", 0, "cast", "qdq", KERNEL_FOLDED)
    assert rep[(32, 8)] == ("fp32", 0, "float", "qdq", KERNEL_FLOAT)
    assert rep[(4, 16)] == ("int4", 0, "cast", "round", KERNEL_FOLDED)
    assert rep[(2, 32)] == ("int2", 0, "cast", "float", KERNEL_FOLDED)
    assert rep[(8, 32)] == ("int8", 0, "cast", "float", KERNEL_FOLDED)
    assert rep[(32, 32)] == ("fp32", 0, "float", "float", KERNEL_FLOAT)
    qdq = [lp.act for lp in plan.linears if lp.act.mode == "qdq"]
    symmetric = [a for a in qdq if a.signed]
    assert len(symmetric) == 1 and symmetric[0].container == "int8" and symmetric[0].zero_point == 0
    affine = [a for a in qdq if not a.signed]
    assert all(a.container == "uint8" for a in affine)
    assert any(a.zero_point > 0 for a in affine) and any(a.zero_point == 0 for a in affine)  # from zero: GELU
    assert all(a.clips == (a.bits == 4) for a in affine) and all(a.clips for a in symmetric)
    exact = _representations(_plan(model, meta, "speed", kernel="exact"), meta)
    assert exact[(8, 8)] == ("uint8", 128, "dq", "qdq", KERNEL_INTEGER)  # the u8u8 kernel, exact on any CPU
    assert exact[(4, 8)] == rep[(4, 8)]  # 4-bit codes are exact with every kernel: unchanged


@pytest.mark.parametrize("machine, cpuinfo, expected", [
    ("x86_64", "flags : fpu sse avx2 fma", "exact"),  # AVX2 only: u8s8 adds pairs in int16 and saturates
    ("x86_64", "flags : fpu avx2 avx512f avx512_vnni", "fast"),
    ("x86_64", "flags : fpu avx2 avx_vnni", "fast"),
    ("x86_64", None, "exact"),  # flags unreadable: assume the worst
    ("aarch64", None, "fast"),
])
def test_auto_kernel_is_fast_only_where_u8s8_is_exact(machine, cpuinfo, expected, monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        info.write_text(cpuinfo)
    real_path = options.Path
    monkeypatch.setattr(options.platform, "machine", lambda: machine)
    monkeypatch.setattr(options, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert options.resolve_kernel("auto") == expected
    assert options.resolve_kernel("fast") == "fast" and options.resolve_kernel("exact") == "exact"


def test_size_profile_packs_sub_byte_weights_and_opset_21_falls_back_to_int4(bert):
    model, meta = bert
    rep = _representations(_plan(model, meta, "size"), meta)
    assert rep[(4, 8)][:3] == ("int4", 0, "cast") and rep[(2, 8)][:3] == ("int2", 0, "cast")
    assert rep[(4, 4)][:3] == ("int4", 0, "cast")
    assert rep[(8, 8)] == ("int8", 0, "dq", "qdq", KERNEL_INTEGER)  # 8 bits: int8 is already the smallest
    rep21 = _representations(_plan(model, meta, "size", opset=21), meta)
    assert rep21[(2, 8)][0] == "int4" and rep21[(2, 32)][0] == "int4"
    with pytest.raises(PlanError, match="opset 20"):
        _plan(model, meta, "speed", opset=20)
    with pytest.raises(PlanError, match="profile"):
        _plan(model, meta, "fast")


def test_lora_and_qat_plans():
    model, meta = _load("bert", "lora")
    plan = _plan(model, meta)
    assert plan.opset == 21
    assert all((lp.weight.container, lp.act.mode) == ("fp32", "float") for lp in plan.linears)
    assert all(lp.rank == lp.max_rank == 4 for lp in plan.linears if lp.adapted)
    assert all(e.container == "fp32" for e in plan.embeddings)
    model, meta = _load("bert", "qat")
    plan = _plan(model, meta)
    assert all((lp.weight.bits, lp.act.bits, lp.weight.container, lp.kernel) == (8, 8, "int8", KERNEL_INTEGER)
               for lp in plan.linears if lp.role == "quantized")


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_merge_is_bit_exact_with_the_eval_forward(model_type):
    """Pruned + merged + snapped weights equal training's effective weight in eval mode, bit for bit."""
    model, meta = _load(model_type)
    plan = _plan(model, meta)
    merged = build_float_model(model, plan)
    with torch.no_grad():
        for name, layer in wrapped_linears(model).items():
            expected = layer.effective_weight().numpy()
            assert (merged.linears[name].values == expected).all(), name
            assert (merged.model.get_submodule(name).weight.numpy() == expected).all()
            lp = plan.linear(name)
            if lp.weight.bits < 32:
                scale = torch.tensor(lp.weight.scale).reshape(-1, 1).numpy()
                assert (merged.linears[name].codes.astype("float32") * scale == expected).all()
                qmin, qmax = lp.weight.code_range
                assert merged.linears[name].codes.min() >= qmin and merged.linears[name].codes.max() <= qmax
        for name, emb in wrapped_embeddings(model).items():
            assert (merged.embeddings[name].values == emb.weight.numpy()).all()
    assert not any(type(m).__name__ in ("GatedLoRALinear", "QuantizedEmbedding") for m in merged.model.modules())


def test_pruned_ranks_and_a_zero_adapter_do_not_reach_the_merged_weight(bert):
    model, meta = bert
    plan = _plan(model, meta)
    layers = wrapped_linears(model)
    adapted = [n for n in meta.quantized if plan.linear(n).adapted]
    with torch.no_grad():
        for name in adapted:
            layer, lp = layers[name], plan.linear(name)
            a, b, e = layer.lora_A.clone(), layer.lora_B, layer.lora_E
            w = merge_weight(layer.base.weight, a, b, e, lp)
            if lp.rank < lp.max_rank:
                a[lp.rank:] += 100.0  # pruned rows of A must not matter
                assert torch.equal(merge_weight(layer.base.weight, a, b, e, lp), w)
            if bool((b == 0).all()):  # the adapter whose B is zero: W = W0 exactly
                assert torch.equal(w, layer.base.weight)
            else:
                assert not torch.equal(w, layer.base.weight)  # non-vacuous: the adapter changes W
    assert any(bool((layers[n].lora_B == 0).all()) for n in adapted)
    assert any(plan.linear(n).rank == 1 for n in adapted)
