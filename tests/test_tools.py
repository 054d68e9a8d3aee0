"""The benchmark tools run end to end on a tiny model: the PEFT peer, the onnxruntime PTQ peers (and their audit
with the same ruler), and the side-by-side benchmark's table and targets report."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from export_support import base_dir, checkpoint, compressed, read_json

from blora_export.export.audit_file import audit_onnx
from blora_export.testing import make_tiny_model, synthetic_sentiment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import ablation_table  # noqa: E402
import bench_methods  # noqa: E402
import peft_lora  # noqa: E402
import probe_pruning  # noqa: E402
import ptq  # noqa: E402
import word_table_probe  # noqa: E402


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """SST-2 layout: train.tsv and dev.tsv with sentence and 0/1 labels."""
    root = tmp_path_factory.mktemp("SST-2")
    for name, n, seed in (("train", 48, 0), ("dev", 32, 1)):
        rows = synthetic_sentiment(n, seed=seed)
        lines = ["sentence\tlabel"] + [f"{r['sentence']}\t{r['label']}" for r in rows]
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_ptq_of_a_lora_export_is_audited_from_its_graph(tmp_path, mode):
    fp32_out, _ = compressed("bert", "lora")
    texts = [(r["sentence"], None) for r in synthetic_sentiment(16)]
    path = ptq.quantize(fp32_out, tmp_path / mode, mode, texts if mode == "static" else None, batch_size=8)
    assert {p.name for p in path.parent.iterdir()} >= {"model.onnx", "deploy.json", "tokenizer.json"}
    audit = audit_onnx(path, 32).to_dict()
    fp32_audit = read_json(fp32_out / "audit.json")
    assert fp32_audit["totals"]["whole_model"]["reduction"] == 0.0
    linears = {r["name"]: r for r in audit["layers"] if r["kind"] == "linear"}
    # the graph's int8 widths count, not the fp32 widths compress recorded for the lora export
    assert all(r["w_bits"] == 8 and r["a_bits"] == 8 for r in linears.values()), linears
    assert audit["totals"]["whole_model"]["reduction"] > 0.7
    if mode == "static":  # QDQ keeps the nodes compress named: module names and adapted projections survive
        assert any("quantized afterwards" in note for note in audit["notes"])
        assert audit["totals"]["adapted"]["reduction"] == pytest.approx(1 - 64 / 1024)
    if mode == "dynamic":  # (static QDQ's per-tensor scales and zero points outweigh a tiny model's weights)
        assert audit["size"]["onnx_bytes"] < (fp32_out / "model.onnx").stat().st_size


def test_peft_peer_trains_and_reports(glue_dir, tiny_bert_dir):
    from blora_export.data import DataSpec
    from train.options import OptimSpec

    data = DataSpec(task="sst2", data_dir=str(glue_dir), max_seq_length=32)
    result = peft_lora.train_peft(str(tiny_bert_dir), data, OptimSpec(batch_size=8, lr=5e-3), "qkv", steps=4,
                                  rank=4, alpha=8.0, eval_batch_size=64)
    assert result["steps"] == 4 and result["seconds_per_step"] > 0
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and result["validation_examples"] == 32
    assert result["trainable_parameters"] > 0


def test_bench_methods_end_to_end(glue_dir, tmp_path):
    model = make_tiny_model(tmp_path / "model", "bert")
    out = tmp_path / "bench"
    args = [str(out), "--model", str(model), "--data-dir", str(glue_dir), "--task", "sst2", "--seeds", "0",
            "--steps", "3", "--batch-size", "8", "--max-seq-length", "32", "--seq-len", "32",
            "--budgets", "0.5", "--wide-budgets", "", "--train-args", "--compile off",
            "--methods", "lora,blora,dynamic,static", "--no-size-profile",
            "--threads", "1", "--latency-threads", "1", "--latency-batches", "1", "--latency-runs", "1"]
    result = CliRunner().invoke(bench_methods.main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    summary = report["summary"]
    assert set(summary) == {"lora", "blora@0.5", "dynamic", "static"}
    assert summary["lora"]["bops_whole"]["mean"] == 0.0 and summary["lora"]["size"]["mean"] == 1.0
    for name in ("blora@0.5", "dynamic", "static"):
        assert summary[name]["bops_whole"]["mean"] > 0.5, name
        assert 0.0 <= summary[name]["metric_onnx"]["mean"] <= 1.0
    assert summary["blora@0.5"]["agreement"]["mean"] >= 0.99  # compress verified it
    assert summary["blora@0.5"]["compress_seconds"]["mean"] > 0
    assert set(report["latency_ms"]["1t x 1"]) == {"fp32", "blora@0.5 (speed)", "quantize_dynamic", "quantize_static"}
    targets = {t["target"]: t["met"] for t in report["targets"]}
    assert "blora@0.5: file <= 0.26x fp32 (speed profile)" in targets
    assert "| blora@0.5 |" in (out / "results.md").read_text(encoding="utf-8")
    # a rerun reuses every finished run: nothing is trained again
    stamp = (out / "runs" / "seed0" / "lora" / "train.json").stat().st_mtime_ns
    assert CliRunner().invoke(bench_methods.main, [*args, "--no-latency"]).exit_code == 0
    assert (out / "runs" / "seed0" / "lora" / "train.json").stat().st_mtime_ns == stamp
    # ... and refuses to mix runs of another setup into the same table
    steps = args.index("--steps") + 1
    changed = CliRunner().invoke(bench_methods.main, [*args[:steps], "4", *args[steps + 1:]])
    assert changed.exit_code == 2 and "steps" in changed.output


def _bench_results(train_args: str, torch_values: list[float], seeds=(0, 1)) -> dict:
    stat = {"values": torch_values, "mean": sum(torch_values) / len(torch_values)}
    return {"config": {"label": "RT", "seeds": list(seeds), "steps": 300, "train_args": train_args},
            "summary": {"blora@0.1": {"metric_torch": stat, "metric_onnx": stat,
                                      "bops_whole": {"mean": 0.91}}}}


def test_ablation_table_pairs_each_run_with_the_baseline_by_seed():
    text = ablation_table.table({"default": _bench_results("", [0.80, 0.70]),
                                 "warmup0": _bench_results("--gate-warmup-ratio 0", [0.78, 0.71])})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "`(defaults)`" in rows["default"] and "| +0.0 |" in rows["default"]
    assert "`--gate-warmup-ratio 0`" in rows["warmup0"] and "78.0 / 71.0" in rows["warmup0"]
    assert "| -0.5 |" in rows["warmup0"] and "9.0% |" in rows["warmup0"]  # (-2 + 1) / 2 points
    with pytest.raises(Exception, match="other seeds"):
        ablation_table.table({"default": _bench_results("", [0.8, 0.7]), "x": _bench_results("", [0.8], (0,))})


def test_word_table_probe_reports_the_size_profiles_table(glue_dir):
    """One line per checkpoint: accuracy as trained and with the size profile's 4-bit word table, and their
    difference; on the tiny test model the narrowed table changes its predictions (testing._spread_predictions)."""
    result = CliRunner().invoke(word_table_probe.main, [str(checkpoint("bert")), "--task", "sst2",
                                                       "--data-dir", str(glue_dir)])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stdout.splitlines() if x.strip()]
    path, n, trained, narrowed, diff = line.split("\t")
    assert path == str(checkpoint("bert")) and int(n) == 32
    assert 0 <= float(trained) <= 1 and 0 <= float(narrowed) <= 1 and float(trained) != float(narrowed)
    assert float(diff) == pytest.approx(float(narrowed) - float(trained), abs=1e-4)
    refused = CliRunner().invoke(word_table_probe.main, [str(checkpoint("bert", "lora")), "--task", "sst2",
                                                        "--data-dir", str(glue_dir)])
    assert refused.exit_code == 1 and "keeps this checkpoint's word table" in refused.output


@pytest.mark.parametrize("unit", ["ffn", "heads"])
def test_pruning_probe_masks_what_slicing_removes(unit):
    """Masking the units that slicing drops gives the sliced model's logits (rows and columns of the FFN, or whole
    heads, removed): what the accuracy half scores with masks, the speed half times as a narrower graph."""
    import torch
    from transformers import AutoTokenizer

    from blora_export.base_model import load_base_model

    model = load_base_model(str(base_dir("bert")), 2).eval()
    narrow = probe_pruning.sliced(model, unit, 0.5)  # a copy, taken before the masks' hooks
    ids = AutoTokenizer.from_pretrained(str(base_dir("bert")))(["good film", "bad plot and dull"], padding=True,
                                                              return_tensors="pt")
    full = model(**ids).logits
    masks = probe_pruning.add_masks(model, unit)
    for mask in masks:
        mask[len(mask) // 2:] = 0.0
    masked = model(**ids).logits
    assert not torch.allclose(masked, full, atol=1e-4)
    assert torch.allclose(narrow(**ids).logits, masked, atol=1e-5)
    layer = probe_pruning.encoder_layers(narrow)[0]
    width = layer.output.dense.in_features if unit == "ffn" else layer.attention.self.query.out_features
    assert width == {"ffn": 64 // 2, "heads": 32 // 2}[unit]  # tiny model: FFN 64 channels, 2 heads of 16


def test_pruning_probe_reports_accuracy_and_speed_per_keep_fraction(glue_dir):
    """Rows per keep fraction: the kept count per layer is the fraction over the whole model, nothing pruned at
    1.0 reproduces the checkpoint's own accuracy, and the speed table times the sliced exports."""
    import torch
    from transformers import AutoTokenizer

    from blora_export.checkpoint import load_checkpoint
    from blora_export.data import DataSpec, load
    from train.batching import encode
    from train.evaluate import evaluate

    ckpt = checkpoint("bert")
    result = CliRunner().invoke(probe_pruning.main, [str(ckpt), "--task", "sst2", "--data-dir", str(glue_dir),
                                                     "--keep", "1.0,0.5", "--recovery-steps", "2",
                                                     "--fisher-examples", "8", "--speed", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| 1.0 |") or line.startswith("| 0.5 |")}
    assert sum(json.loads(rows["0.5"][1])) == 64 and sum(json.loads(rows["1.0"][1])) == 128  # 2 layers x 64
    model, meta = load_checkpoint(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    dataset = load(DataSpec(task="sst2", data_dir=str(glue_dir), max_seq_length=meta.max_seq_length))
    own = evaluate(model, tokenizer, encode(tokenizer, dataset.validation, meta.max_seq_length), dataset.task, 64,
                   torch.device("cpu"))["accuracy"]
    assert float(rows["1.0"][2]) == pytest.approx(100 * own, abs=0.05)
    assert "| quantize_dynamic, ffn keep 0.5 |" in result.stdout and "| quantize_dynamic |" in result.stdout


def test_pruning_probe_keeps_the_highest_scores_over_the_whole_model_and_recovers_only_adapters_and_head(glue_dir):
    """keep_top closes the globally lowest scores (layers end up uneven); recovery moves the adapters and the head
    and nothing else (gates, ranges and the frozen base stay as trained)."""
    import torch
    from transformers import AutoTokenizer

    from blora_export import roles
    from blora_export.checkpoint import load_checkpoint
    from blora_export.data import DataSpec, load
    from train.batching import encode

    masks = [torch.ones(4), torch.ones(4)]
    kept = probe_pruning.keep_top(masks, torch.tensor([9.0, 1, 8, 2, 7, 6, 5, 0]), 0.5)
    assert kept == [2, 2] and masks[0].tolist() == [1, 0, 1, 0] and masks[1].tolist() == [1, 1, 0, 0]
    kept = probe_pruning.keep_top(masks, torch.tensor([9.0, 8, 7, 6, 1, 2, 3, 0]), 0.5)
    assert kept == [4, 0]

    ckpt = checkpoint("bert")
    model, meta = load_checkpoint(ckpt)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    dataset = load(DataSpec(task="sst2", data_dir=str(glue_dir), max_seq_length=meta.max_seq_length))
    probe_pruning.recover(model, meta, tokenizer, encode(tokenizer, dataset.train, meta.max_seq_length),
                          dataset.task, steps=2)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    allowed = {k for k, (role, _) in roles.trained_tensors(model, meta.head).items()
               if role in (roles.ADAPTER, roles.HEAD)}
    assert moved and moved <= allowed, moved - allowed
