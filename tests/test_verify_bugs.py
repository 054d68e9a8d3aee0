"""Verification is honest both ways: it passes the faithful export and refuses each real export bug injected
into it - a wrong activation scale, a wrong zero point, a wrong weight scale, one wrong row of weight codes, a
missing Clip."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from export_support import checkpoint
from onnx import numpy_helper
from transformers import AutoTokenizer

from blora_export.checkpoint import load_checkpoint, read_validation
from blora_export.export.fuse import FUSED_OP
from blora_export.export.options import resolve_kernel
from blora_export.export.pipeline import CompressOptions, compress
from blora_export.export.plan import make_plan
from blora_export.export.verify import VerificationError, verify_export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A B-LoRA export written without verification, and what verify_export needs."""
    ckpt = checkpoint("bert")
    out = tmp_path_factory.mktemp("bugs") / "out"
    result = compress(ckpt, out, CompressOptions(timing_runs=0, verify=False))
    model, meta = load_checkpoint(ckpt)
    plan = make_plan(model, meta.quantized, meta.adapted, meta.profile, meta.config.method,
                     kernel=resolve_kernel(CompressOptions().kernel))
    assert plan == result.plan
    return out, model, plan, meta, AutoTokenizer.from_pretrained(str(ckpt)), read_validation(ckpt)


def _verify(path, exported):
    _, model, plan, meta, tokenizer, examples = exported
    return verify_export(path, model, plan, tokenizer, examples, ["input_ids", "attention_mask", "token_type_ids"],
                         meta, lambda _m: None)


def _initializer(model, suffix: str, pick=0):
    found = [t for t in model.graph.initializer if t.name.endswith(suffix)]
    assert found, suffix
    return found[pick]


def _set(model, tensor, values: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(values.astype(numpy_helper.to_array(tensor).dtype), tensor.name))


def _activation_scale(model):
    """An activation step 1.5x too large (another layer's scale), in the last layer (a random tiny model's first
    layers barely move its logits)."""
    t = _initializer(model, ".input_scale", pick=-1)
    _set(model, t, numpy_helper.to_array(t) * 1.5)


_CODE_ZERO = {onnx.TensorProto.INT8: 0, onnx.TensorProto.UINT8: 128}  # --kernel fast / exact containers


def _eight_bit_weight(model, suffix: str):
    """The initializer `suffix` of the last 8-bit weight on an integer kernel (int8 codes, or uint8 + 128)."""
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    dequantized |= {n.input[1] for n in model.graph.node if n.op_type == FUSED_OP}
    codes = [t for t in model.graph.initializer if t.name.endswith(".weight_quant") and t.name in dequantized
             and t.data_type in _CODE_ZERO
             and np.abs(numpy_helper.to_array(t).astype(np.int32) - _CODE_ZERO[t.data_type]).max() > 8][-1]
    return next(t for t in model.graph.initializer if t.name == codes.name[: -len("_quant")] + suffix)


def _zero_point(model):
    """The product reading an activation's zero point one off from its QuantizeLinear's (the DequantizeLinear,
    or the fused integer node): every value of the layer's input one step away (the last uint8 reader found: the
    last fused node where the export has them)."""
    inits = {t.name: t for t in model.graph.initializer}
    readers = [(n, 2) for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith(".input_dq")]
    readers += [(n, 4) for n in model.graph.node if n.op_type == FUSED_OP]
    node, index = [(n, i) for n, i in readers if inits[n.input[i]].data_type == onnx.TensorProto.UINT8][-1]
    zero = inits[node.input[index]]
    wrong = numpy_helper.from_array((numpy_helper.to_array(zero).astype(np.int32) + 1).astype(np.uint8),
                                    zero.name + "_wrong")
    model.graph.initializer.append(wrong)
    node.input[index] = wrong.name


def _weight_scale(model):
    """Per-channel steps mixed up: the first channel's step used for every channel."""
    t = _eight_bit_weight(model, "_scale")
    values = numpy_helper.to_array(t)
    _set(model, t, np.full_like(values, values.reshape(-1)[0]))


def _weight_row(model):
    """One output channel of an 8-bit weight with its codes negated (the others untouched)."""
    t = _eight_bit_weight(model, "_quant")
    codes, zero = numpy_helper.to_array(t).astype(np.int32), _CODE_ZERO[t.data_type]
    codes[:, 0] = 2 * zero - codes[:, 0]  # the graph holds W^T: column 0 is output channel 0
    _set(model, t, codes)


def _missing_clip(model):
    """The Clip in front of a 4-bit activation's QuantizeLinear (which alone would saturate at the 8-bit ends)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def span(clip):
        base = clip.name[: -len("_clip")]
        return float((inits[clip.input[2]] - inits[clip.input[1]]) / inits[base + "_scale"])

    clips = [n for n in model.graph.node if n.op_type == "Clip" and n.name.endswith(".input_clip")]
    clip = min(clips, key=span)
    assert round(span(clip)) <= 15
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name == clip.output[0]:
                n.input[i] = clip.input[0]
    model.graph.node.remove(clip)


BUGS = {"activation scale": _activation_scale, "zero point": _zero_point, "weight scale": _weight_scale,
        "weight code row": _weight_row, "missing clip": _missing_clip}


def test_the_faithful_export_passes(exported):
    result = _verify(exported[0] / "model.onnx", exported)
    assert result.loader.within_tolerance and result.loader.agreement == 1.0


@pytest.mark.parametrize("bug", list(BUGS))
def test_each_injected_bug_is_refused(bug, exported, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(exported[0] / "model.onnx", path)
    model = onnx.load(str(path))
    BUGS[bug](model)
    onnx.save(model, str(path))
    with pytest.raises(VerificationError, match="integer-exact reference"):
        _verify(path, exported)
