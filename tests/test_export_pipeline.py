"""End to end: checkpoint -> compress -> ONNX that reproduces PyTorch, with the planned Q/DQ, audit and kernels."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_support import (
    ROOT,
    SEQ_LEN,
    base_dir,
    checkpoint,
    compressed,
    hand_bops_tiny_bert,
    nodes_by_module,
    read_json,
    save_with_wrong_activation_scale,
    tokenize,
    tree_bytes,
)
from onnx import TensorProto

from blora_export import runtime
from blora_export.atomic import OutputExistsError
from blora_export.checkpoint import CheckpointError, load_checkpoint
from blora_export.export import pipeline
from blora_export.export.fuse import FUSED_OP, MS_DOMAIN
from blora_export.export.graph_products import GraphIndex
from blora_export.export.options import resolve_kernel
from blora_export.export.pipeline import CompressOptions, compress
from blora_export.export.plan import KERNEL_INTEGER
from blora_export.export.tables import narrow_word_table
from blora_export.export.verify import RTOL, VerificationError
from blora_export.testing import synthetic_sentiment

BLORA_CASES = [("bert", "speed"), ("bert", "size"), ("deberta-v2", "speed"), ("deberta-v2", "size")]
INTEGER_OPS = {"QGemm", "MatMulIntegerToFloat"}


def _fresh_inputs(out: Path, n: int = 40, seed: int = 7):
    """Inputs the export never saw, of varied lengths (dynamic batch and sequence axes)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    texts = [r["sentence"] for r in synthetic_sentiment(n, seed)]
    texts = [" ".join([t] * (1 + i % 3)) for i, t in enumerate(texts)]  # 10 to 30 words
    names = read_json(out / "deploy.json")["input_names"]
    return [tokenize(tok, texts[i:i + 8], names) for i in range(0, n, 8)]


def _torch_logits(ckpt, batches, profile="speed"):
    """The checkpoint's logits, with the word table the profile ships (the size profile's 4-bit table)."""
    import torch

    model, _ = load_checkpoint(ckpt)
    narrow_word_table(model, profile)
    with torch.no_grad():
        return np.concatenate([model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy()
                               for b in batches])


@pytest.mark.parametrize("model_type,profile", BLORA_CASES)
def test_onnxruntime_reproduces_pytorch(model_type, profile):
    out, result = compressed(model_type, "blora", profile)
    verify = result.audit.to_dict()["verify"]
    for r in (verify, verify["default_options"]):  # the project's loader and plain onnxruntime
        assert r["n_inputs"] == 64 and r["agreement"] == 1.0 and r["within_tolerance"], r
    # Independently of the pipeline: new inputs of other lengths, the one tolerance rule of verify.py.
    batches = _fresh_inputs(out)
    reference = _torch_logits(checkpoint(model_type), batches, profile)
    for options in (runtime.session_options(), ort.SessionOptions()):
        session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(["logits"], b)[0] for b in batches])
        assert np.abs(got - reference).max() <= RTOL * max(1.0, np.abs(reference).max())
        assert (got.argmax(-1) == reference.argmax(-1)).all()
    margin = reference[:, 1] - reference[:, 0]
    if profile == "speed":
        assert len(set(reference.argmax(-1))) == 2  # non-vacuous: both classes are predicted
    else:  # the head of the random test model is aimed at its 8-bit table's features (testing._spread_predictions):
        assert np.ptp(margin) > 1.0  # with the 4-bit table it predicts one class, but the logits follow the input


def _producer(graph):
    return {o: n for n in graph.node for o in n.output}


def _init(graph, name):
    return next((t for t in graph.initializer if t.name == name), None)


@pytest.mark.parametrize("model_type,profile", BLORA_CASES)
def test_graph_holds_the_planned_representation(model_type, profile):
    out, result = compressed(model_type, "blora", profile)
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [result.plan.opset]
    assert [i.name for i in model.graph.input] == read_json(out / "deploy.json")["input_names"]
    assert [o.name for o in model.graph.output] == ["logits"]
    graph, produced, by_module = model.graph, _producer(model.graph), nodes_by_module(model)
    constant = GraphIndex(model).is_constant
    expected_type = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int4": TensorProto.INT4,
                     "int2": TensorProto.INT2, "int16": TensorProto.INT16, "fp32": TensorProto.FLOAT}
    for lp in result.plan.linears:
        calls = by_module[lp.name]
        assert len(calls) == (2 if model_type == "deberta-v2" and lp.name.endswith(("query_proj", "key_proj"))
                              else 1)
        for node in calls:
            # The integer path (<= 8-bit weight behind a 4/8-bit activation) is one fused onnxruntime node with
            # the bias inside; every other Linear, and a product on a constant input, keeps the standard ops.
            fused = node.op_type == FUSED_OP
            on_constant = constant(node.input[0])  # DeBERTa's relative-position projections
            assert on_constant == (len(calls) == 2 and node is not calls[0]), lp.name
            assert fused == (lp.weight.delivery == "dq" and lp.act.mode == "qdq" and not lp.act.signed
                             and not on_constant), lp.name
            weight = produced.get(node.input[1])
            wp = lp.weight
            if fused:
                assert node.domain == MS_DOMAIN and weight is None and len(node.input) == 7
                q, zp = _init(graph, node.input[1]), _init(graph, node.input[5])
                assert q.data_type == expected_type[wp.container] == zp.data_type
                assert set(onnx.numpy_helper.to_array(zp).tolist()) == {wp.zero_point}
                assert _init(graph, node.input[6]).dims == [q.dims[1]]  # the bias, one per output column
            elif wp.delivery == "float":
                assert weight is None and _init(graph, node.input[1]).data_type == TensorProto.FLOAT
            elif wp.delivery == "dq":
                assert weight.op_type == "DequantizeLinear" and weight.attribute[0].i == 1  # per output channel
                q, zp = _init(graph, weight.input[0]), _init(graph, weight.input[2])
                assert q.data_type == expected_type[wp.container] == zp.data_type
                assert set(onnx.numpy_helper.to_array(zp).tolist()) == {wp.zero_point}
            else:
                assert weight.op_type == "Mul" and produced[weight.input[0]].op_type == "Cast"
                q = _init(graph, produced[weight.input[0]].input[0])
                assert q.data_type == expected_type[wp.container]
            act = produced.get(node.input[0])
            if lp.act.mode == "qdq":
                q_node = act if fused else produced[act.input[0]]
                assert fused or act.op_type == "DequantizeLinear"
                assert q_node.op_type == "QuantizeLinear"
                before = produced.get(q_node.input[0])
                assert (before is not None and before.op_type == "Clip") == lp.act.clips
                zp = _init(graph, q_node.input[2])
                assert zp.data_type == (TensorProto.INT8 if lp.act.signed else TensorProto.UINT8)
                assert onnx.numpy_helper.to_array(zp).item() == lp.act.zero_point
            elif lp.act.mode == "round":
                assert act.op_type == "Mul" and produced[act.input[0]].op_type == "Round"
            else:  # float: no quantizer in front
                assert act is None or act.op_type != "DequantizeLinear"
                assert act is None or not any(produced.get(i) is not None and produced[i].op_type == "Round"
                                              for i in act.input)
    containers = {lp.weight.container for lp in result.plan.linears}
    assert {"int16", "fp32", "int8"} <= containers
    assert ({"int8"} if profile == "speed" else {"int4", "int2"}) <= containers
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for ep in result.plan.embeddings:  # int8 rows -> Gather -> Cast -> Mul(gathered row scales)
        table = f"{ep.name}.weight_quant"
        if ep.container == "int4":  # packed int4 -> Cast to int8 (folded at load) -> Gather
            table = next(n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] == table)
        gather = next(n for n in graph.node if n.op_type == "Gather" and n.input[0] == table)
        assert _init(graph, f"{ep.name}.weight_quant").data_type == expected_type[ep.container]
        (cast,) = consumers[gather.output[0]]
        (mul,) = consumers[cast.output[0]]
        assert (cast.op_type, mul.op_type) == ("Cast", "Mul")
        assert produced[mul.input[1]].op_type == "Gather"
        assert produced[mul.input[1]].input[0] == f"{ep.name}.weight_scale"


def test_audit_bops_equal_a_hand_computation():
    out, result = compressed("bert", "blora", "speed")
    audit = read_json(out / "audit.json")
    hand = hand_bops_tiny_bert()
    totals = audit["totals"]
    assert audit["seq_len"] == SEQ_LEN
    assert totals["whole_model"]["bops"] == hand["whole"]
    assert totals["whole_model"]["bops_fp32"] == hand["whole_fp32"]
    assert totals["adapted"]["bops"] == hand["adapted"]
    assert totals["adapted"]["bops_fp32"] == hand["adapted_fp32"]
    assert totals["whole_model"]["reduction"] == pytest.approx(1 - hand["whole"] / hand["whole_fp32"])
    rows = {r["name"]: r for r in audit["layers"]}
    for lp in result.plan.linears:
        row = rows[lp.name]
        assert (row["w_bits"], row["a_bits"], row["macs"]) == (lp.weight.bits, lp.act.bits, lp.macs)
        assert row["bops"] == lp.macs * lp.weight.bits * lp.act.bits
        assert row["rank"] == (lp.rank if lp.adapted else None)
    attention = [r for r in audit["layers"] if r["kind"] == "attention"]
    assert len(attention) == 4 and all(r["macs"] == SEQ_LEN * SEQ_LEN * 32 for r in attention)
    for name in ("model.onnx", "audit.json", "audit.md", "audit.png", "deploy.json", "tokenizer.json"):
        assert (out / name).is_file()
    assert audit["size"]["onnx_bytes"] < audit["size"]["fp32_onnx_bytes"]
    query = "bert.encoder.layer.0.attention.self.query"  # W8: int8 codes, or uint8 + 128 where u8s8 saturates
    container = "int8" if resolve_kernel("auto") == "fast" else "uint8"
    assert result.plan.linear(query).weight.container == container
    assert f"| {query} | linear | 4/4 | 8 | {container} |" in (out / "audit.md").read_text()
    assert (out / "audit.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_speed_profile_runs_integer_kernels(model_type, tmp_path):
    """onnxruntime's optimized graph feeds every integer-path weight (4/8-bit activations, <= 8-bit weights)
    into an integer kernel; the size profile keeps its packed sub-byte layers in fp32."""
    for profile in ("speed", "size"):
        out, result = compressed(model_type, "blora", profile)
        so = runtime.session_options()
        so.optimized_model_filepath = str(tmp_path / f"{profile}.onnx")
        ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
        integer_inputs = {i for n in optimized.graph.node if n.op_type in INTEGER_OPS for i in n.input}
        for lp in result.plan.linears:
            on_integer_kernel = f"{lp.name}.weight_quant" in integer_inputs
            assert on_integer_kernel == (lp.kernel == KERNEL_INTEGER), (profile, lp.name)
        kernels = result.audit.to_dict()["runtime_kernels"]
        assert kernels["integer_products_found"] == kernels["integer_products_expected"]
        n_integer = sum(lp.kernel == KERNEL_INTEGER for lp in result.plan.linears)
        assert n_integer == (5 if profile == "speed" else 2)  # 8-bit-activation layers with <= 8-bit weights


@pytest.mark.parametrize("model_type,method,profile", [("bert", "lora", "speed"), ("deberta-v2", "qat", "size")])
def test_lora_and_qat_checkpoints_export(model_type, method, profile):
    out, result = compressed(model_type, method, profile)
    verify = result.audit.to_dict()["verify"]
    assert verify["agreement"] == 1.0 and verify["within_tolerance"]
    assert verify["default_options"]["within_tolerance"]
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    rows = [r for r in result.audit.to_dict()["layers"] if r["kind"] == "linear"]
    if method == "lora":
        assert not ops & {"QuantizeLinear", "DequantizeLinear"}
        assert all((r["w_bits"], r["a_bits"]) == (32, 32) for r in rows)
        assert result.audit.to_dict()["totals"]["whole_model"]["reduction"] == 0.0
    else:
        quantized = [r for r in rows if r["name"] in result.plan.quantized]
        container = "int8" if resolve_kernel("auto") == "fast" else "uint8"  # the kernel compress chose here
        assert all((r["w_bits"], r["a_bits"], r["container"]) == (8, 8, container) for r in quantized)
        assert result.audit.to_dict()["runtime_kernels"]["integer_products_found"] == 12


def test_portable_export_is_standard_onnx_with_the_same_arithmetic(tmp_path):
    """--portable keeps standard Q/DQ -> MatMul (+ Add) instead of the fused onnxruntime nodes; both verify and
    give the same logits up to the float order of the bias Add."""
    fused_out, _ = compressed("bert", "blora", "speed")
    portable = tmp_path / "portable"
    result = compress(checkpoint("bert"), portable, CompressOptions(timing_runs=0, portable=True))
    assert result.audit.verify.loader.within_tolerance and result.audit.verify.loader.agreement == 1.0
    standard, fused = onnx.load(str(portable / "model.onnx")), onnx.load(str(fused_out / "model.onnx"))
    assert {o.domain for o in standard.opset_import} <= {"", "ai.onnx"}
    assert all(n.domain in ("", "ai.onnx") for n in standard.graph.node)
    n_fused = sum(n.op_type == FUSED_OP for n in fused.graph.node)
    assert n_fused == sum(lp.weight.delivery == "dq" and lp.act.mode == "qdq" and not lp.act.signed
                          for lp in result.plan.linears) > 0
    assert len(fused.graph.node) < len(standard.graph.node)  # each fused Linear drops two DQs and an Add
    batches = _fresh_inputs(fused_out)
    logits = {}
    for name, out in (("fused", fused_out), ("portable", portable)):
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        logits[name] = np.concatenate([session.run(["logits"], b)[0] for b in batches])
    assert np.abs(logits["fused"] - logits["portable"]).max() <= 1e-4 * max(1.0, np.abs(logits["portable"]).max())
    assert (result.audit.to_dict()["layers"] == read_json(fused_out / "audit.json")["layers"])  # same audit


def test_same_checkpoint_gives_identical_bytes(tmp_path):
    out, _ = compressed("deberta-v2", "blora", "speed")
    again = tmp_path / "again"
    compress(checkpoint("deberta-v2"), again, CompressOptions(timing_runs=0))
    for name in ("model.onnx", "audit.json", "deploy.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def _siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}."))


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    save_with_wrong_activation_scale(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="differs from the integer-exact reference"):
        compress(checkpoint("bert"), out, CompressOptions(timing_runs=0))
    assert not out.exists() and _siblings(out) == []


def test_failure_mid_way_leaves_an_existing_output_unchanged(tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(compressed("bert", "blora", "speed")[0], out)
    before = tree_bytes(out)
    with pytest.raises(OutputExistsError):
        compress(checkpoint("bert"), out)

    def broken_chart(*_args, **_kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(pipeline.report, "chart", broken_chart)
    with pytest.raises(RuntimeError, match="disk full"):
        compress(checkpoint("bert"), out, CompressOptions(overwrite=True, profile="size", timing_runs=0))
    assert tree_bytes(out) == before and _siblings(out) == []


def test_other_seq_len_is_re_profiled_and_validation_file_with_pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = synthetic_sentiment(20, seed=3)
    pairs.write_text("\n".join(f'{{"text": "{a["sentence"]}", "text_pair": "{b["sentence"]}"}}'
                               for a, b in zip(rows[:10], rows[10:], strict=True)) + "\n")
    out = tmp_path / "out"
    result = compress(checkpoint("bert"), out, CompressOptions(seq_len=16, validation_file=str(pairs),
                                                               timing_runs=0))
    rows = {r["name"]: r for r in result.audit.to_dict()["layers"]}
    assert result.audit.to_dict()["seq_len"] == 16
    assert rows["bert.encoder.layer.0.attention.self.query"]["macs"] == 16 * 32 * 32
    assert rows["/bert/encoder/layer.0/attention/self/MatMul"]["macs"] == 16 * 16 * 32
    assert result.audit.to_dict()["verify"]["n_inputs"] == 10 and result.audit.to_dict()["verify"]["agreement"] == 1.0


def test_checkpoint_without_validation_needs_a_file_or_no_verify(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint("bert", "qat"), ckpt)
    (ckpt / "validation.jsonl").unlink()
    with pytest.raises(CheckpointError, match="--validation-file"):
        compress(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = compress(ckpt, tmp_path / "out", CompressOptions(verify=False, timing_runs=0))
    assert result.audit.to_dict()["verify"] == {"skipped": True}
    assert ROOT.exists()


def test_int4_embeddings_and_per_tensor_weights(tmp_path):
    """QAT W8A8 with one scale per weight tensor and 4-bit embedding rows (packed int4 in the file)."""
    from blora_export.testing import make_test_checkpoint

    ckpt = make_test_checkpoint(tmp_path / "ckpt", base_dir("bert"), method="qat",
                                embedding_bits=4, per_channel_weights=False, n_validation=24)
    result = compress(ckpt, tmp_path / "out", CompressOptions(timing_runs=0))
    assert result.audit.to_dict()["verify"]["agreement"] == 1.0 and result.audit.to_dict()["verify"]["within_tolerance"]
    assert {e["bits"] for e in result.audit.to_dict()["embeddings"]} == {4}
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    tables = [t for t in graph.initializer if t.name.endswith("embeddings.weight_quant")]
    assert len(tables) == 3 and all(t.data_type == TensorProto.INT4 for t in tables)
    scales = [t for t in graph.initializer if t.name.endswith("query.weight_scale")]
    assert len(scales) == 2 and all(list(s.dims) == [] for s in scales)  # per-tensor: a scalar scale


def test_size_profile_ships_a_4_bit_word_table(tmp_path):
    """The size profile re-quantizes the 8-bit trained word table to packed 4-bit rows (the other tables keep
    their trained width); verification, eval --ckpt and the audit all speak of the table that ships."""
    from blora_export.data import DataSpec
    from blora_export.evaluation import EvalOptions, evaluate_export

    (_, speed), (size_out, size) = compressed("bert", "blora", "speed"), compressed("bert", "blora", "size")
    word = "bert.embeddings.word_embeddings"
    table = _init(onnx.load(str(size_out / "model.onnx")).graph, f"{word}.weight_quant")
    assert table.data_type == TensorProto.INT4
    speed_bits = {e["name"]: e["bits"] for e in speed.audit.to_dict()["embeddings"]}
    size_bits = {e["name"]: e["bits"] for e in size.audit.to_dict()["embeddings"]}
    assert len(speed_bits) == 3 and set(speed_bits.values()) == {8}
    assert size_bits == {**speed_bits, word: 4}
    assert any("re-quantized here to 4-bit rows" in n for n in size.audit.to_dict()["notes"])
    assert not any("re-quantized" in n for n in speed.audit.to_dict()["notes"])
    batches = _fresh_inputs(size_out)
    trained, shipped = _torch_logits(checkpoint("bert"), batches), _torch_logits(checkpoint("bert"), batches, "size")
    assert np.abs(shipped - trained).max() > 1e-3  # non-vacuous: the shipped table is another table
    dev = tmp_path / "SST-2"
    dev.mkdir()
    rows = synthetic_sentiment(24, seed=5)
    (dev / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows))
    options = EvalOptions(DataSpec(task="sst2", data_dir=str(dev)), ckpt=str(checkpoint("bert")))
    report = evaluate_export(size_out, options)
    assert report["agreement"] == 1.0 and report["max_abs_logit_diff"] <= RTOL * max(1.0, np.abs(shipped).max())


def test_deberta_with_separate_position_projections(tiny_deberta_dir, tmp_path):
    """The core tiny DeBERTa-v2 (share_att_key False, zero biases): pos_key_proj / pos_query_proj are quantized
    Linears whose only input is the relative-embedding table (constant, folded by onnxruntime at load)."""
    from blora_export.testing import make_test_checkpoint

    ckpt = make_test_checkpoint(tmp_path / "ckpt", tiny_deberta_dir, n_validation=32)
    result = compress(ckpt, tmp_path / "out", CompressOptions(timing_runs=0))
    verify = result.audit.to_dict()["verify"]
    assert verify["agreement"] == 1.0 and verify["default_options"]["agreement"] == 1.0
    assert verify["within_tolerance"] and verify["default_options"]["within_tolerance"]
    rows = {r["name"]: r for r in result.audit.to_dict()["layers"]}
    pos = [n for n in rows if ".pos_" in n]
    assert len(pos) == 4 and all(rows[n]["macs"] == 2 * 16 * 32 * 32 for n in pos)  # 2 * position_buckets rows
    assert any("constant input" in n for n in result.audit.to_dict()["notes"])
