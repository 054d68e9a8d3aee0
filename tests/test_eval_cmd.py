"""`blora-export eval`: the task metric of a compress output in onnxruntime, next to its checkpoint's."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from export_support import checkpoint, compressed

from blora_export import runtime
from blora_export.cli import main
from blora_export.data import glue_task
from blora_export.evaluation import EvalError, _label_map
from blora_export.testing import synthetic_sentiment

ROWS = synthetic_sentiment(40, seed=7)


def _run(*args):
    return CliRunner().invoke(main, ["eval", *[str(a) for a in args]])


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output


def _onnx_predictions(out, texts):
    return runtime.load(out).logits(texts).argmax(-1)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """SST-2 layout: dev.tsv with sentence and 0/1 labels."""
    root = tmp_path_factory.mktemp("SST-2")
    lines = ["sentence\tlabel"] + [f"{r['sentence']}\t{r['label']}" for r in ROWS]
    (root / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_eval_glue_dir_with_checkpoint_json(glue_dir):
    out, _ = compressed("bert")
    result = _run(out, "--task", "sst2", "--data-dir", glue_dir, "--ckpt", checkpoint("bert"), "--json",
                  "--max-eval-samples", 32, "--batch-size", 8, "--noise-floor")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "sst2" and report["metric"] == "accuracy" and report["n_examples"] == 32
    rows = ROWS[:32]
    predictions = _onnx_predictions(out, [r["sentence"] for r in rows])
    assert 0 < predictions.sum() < 32  # both classes predicted: the metric is not vacuous
    expected = float((predictions == np.array([r["label"] for r in rows])).mean())
    assert report["onnx"]["accuracy"] == pytest.approx(expected)
    assert report["onnx"]["examples_per_second"] > 0
    assert report["agreement"] >= 0.9  # compress verified >= 99% agreement on its own validation set
    disagree = 1 - report["agreement"]
    assert abs(report["torch"]["accuracy"] - report["onnx"]["accuracy"]) <= disagree + 1e-9
    assert report["max_abs_logit_diff"] >= 0
    # float32-level input noise moves the reference's logits a little (the residual stream stays float) and
    # keeps nearly every prediction
    assert 0 < report["noise"]["max_abs_logit_diff"] < 0.1
    assert 0.9 <= report["noise"]["agreement"] <= 1


def test_eval_classification_file_maps_label_names(tmp_path):
    out, _ = compressed("bert")
    path = tmp_path / "dev.csv"
    names = ["negative", "positive"]  # the label names saved in OUT/deploy.json
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        writer.writerows([r["sentence"], names[r["label"]]] for r in ROWS)
    result = _run(out, "--task", "classification", "--validation-file", path, "--text-column", "review",
                  "--label-column", "stars")
    assert result.exit_code == 0, result.output
    predictions = _onnx_predictions(out, [r["sentence"] for r in ROWS])
    accuracy = float((predictions == np.array([r["label"] for r in ROWS])).mean())
    assert f"accuracy {accuracy:.4f}" in result.stdout and "examples/s" in result.stdout


def test_label_map_lines_up_ids_by_name():
    task = glue_task("wnli")  # labels ("not_entailment", "entailment")
    mapping = _label_map(task, ["entailment", "not_entailment"], False, "out")
    assert mapping.tolist() == [1, 0]
    assert _label_map(task, ["not_entailment", "entailment"], False, "out") is None
    with pytest.raises(EvalError, match="unknown to the model"):
        _label_map(task, ["negative", "positive"], False, "out")
    with pytest.raises(EvalError, match="regression"):
        _label_map(glue_task("stsb"), ["negative", "positive"], False, "out")


def test_eval_errors_are_one_line(tmp_path, glue_dir):
    out, _ = compressed("bert")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a good movie", "label": "neutral"}\n', encoding="utf-8")
    _one_line_error(_run(out, "--task", "classification", "--validation-file", bad), "'neutral'")
    _one_line_error(_run(out, "--task", "sst2"), "--data-dir")
    _one_line_error(_run(out, "--task", "sst2", "--data-dir", glue_dir, "--noise-floor"), "--ckpt")
    _one_line_error(_run(out, "--task", "sst3", "--data-dir", glue_dir), "unknown task")
    _one_line_error(_run(tmp_path, "--task", "sst2", "--data-dir", glue_dir), "deploy.json")
    _one_line_error(_run(out, "--task", "mrpc", "--data-dir", glue_dir), "dev.tsv")
    _one_line_error(_run(out, "--task", "qnli", "--data-dir", glue_dir), "--text-column")


def test_eval_help_has_an_example():
    result = CliRunner().invoke(main, ["eval", "--help"])
    assert result.exit_code == 0 and "blora-export eval out --task sst2" in result.output
