"""Deploy target "adapter" end to end: W0 quantized alone, the kept adapter an fp32 branch on the same quantized
input; the checkpoint stores the target, compress exports it (verified against the integer-exact reference) and
the audit counts the branch's BOPs exactly as training's cost model does."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from blora_export import gated_model
from blora_export.checkpoint import load_checkpoint
from blora_export.export.pipeline import CompressOptions, compress
from blora_export.testing import make_test_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert_dir):
    work = tmp_path_factory.mktemp("adapter")
    ckpt = make_test_checkpoint(work / "ckpt", tiny_bert_dir, deploy="adapter", seq_len=32)
    return ckpt, work / "out", compress(ckpt, work / "out", CompressOptions(timing_runs=0))


def test_the_checkpoint_stores_the_target_and_the_plan_keeps_adapters_unmerged(exported):
    ckpt, _, result = exported
    model, meta = load_checkpoint(ckpt)
    assert meta.config.deploy == "adapter"
    unmerged = [lp for lp in result.plan.linears if lp.unmerged]
    assert unmerged and {lp.name for lp in unmerged} == {lp.name for lp in result.plan.linears if lp.adapted}
    assert any(lp.rank < lp.max_rank for lp in unmerged)  # learned ranks: pruned components are not shipped


def test_the_branch_reads_the_quantized_input_and_is_audited_like_training_counts_it(exported):
    ckpt, out, result = exported
    model, meta = load_checkpoint(ckpt)
    audit = result.audit.to_dict()
    assert audit["verify"]["within_tolerance"] and audit["verify"]["agreement"] == 1.0
    rows = {r["name"]: r for r in audit["layers"] if r["kind"] == "adapter"}
    for lp in (lp for lp in result.plan.linears if lp.unmerged):
        for name, (macs, w_bits, a_bits) in lp.branch_products().items():
            assert (rows[name]["macs"], rows[name]["w_bits"], rows[name]["a_bits"]) == (macs, w_bits, a_bits)
        assert rows[f"{lp.name}.lora_A"]["a_bits"] == lp.act.bits  # the layer's quantized input
    assert any(lp.unmerged and lp.act.bits < 32 for lp in result.plan.linears)
    # one cost model: training's deterministic count, branches included, is what the graph audit reads
    counted = gated_model.deterministic_bops(model, meta.profile)["whole_model"]
    assert audit["totals"]["whole_model"]["bops"] == counted["bops"]
    assert audit["totals"]["whole_model"]["bops_fp32"] == counted["bops_fp32"]  # the base model's fp32 BOPs
    # the main weights are W0's codes alone: the adapter is not folded in
    graph = onnx.load(str(out / "model.onnx"))
    lp = next(lp for lp in result.plan.linears if lp.unmerged and lp.weight.bits < 32)
    codes = numpy_helper.to_array(next(t for t in graph.graph.initializer if t.name == f"{lp.name}.weight_quant"))
    w0 = model.get_submodule(lp.name).base.weight.detach().numpy()
    scale = np.asarray(lp.weight.scale, dtype=np.float32).reshape(-1, 1)
    expected = np.clip(np.round(w0 / scale), *lp.weight.code_range) + lp.weight.zero_point
    assert np.array_equal(codes.T.astype(np.int64), expected.astype(np.int64))
