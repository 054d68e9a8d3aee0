"""The train command's shell: one-line errors with exit status 2, --config merging, classification files,
regression, and a --help that does not import torch."""

import json
import subprocess
import sys

import pytest
from train_support import FAST, assert_ok, train_cli, write_glue_sst2

from blora_export.checkpoint import load_checkpoint
from blora_export.testing import synthetic_sentiment


def _one_line_error(result, *needles):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_glue_sst2(tmp_path_factory.mktemp("cli-data"), n_train=48, n_dev=16)


def test_bad_inputs_are_one_line_exit_2(tmp_path, tiny_bert_dir, data):
    base = ["--model", tiny_bert_dir, "--output-dir", tmp_path / "out", *FAST[2:]]
    _one_line_error(train_cli(*base, "--task", "sts", "--data-dir", data), "unknown task 'sts'")
    _one_line_error(train_cli(*base, "--task", "classification", "--train-file", tmp_path / "no.csv",
                              "--validation-file", tmp_path / "no.csv"), "does not exist")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--max-rank", "0"), "max rank must be >= 1")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--batch-size", "0"), "--batch-size")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--weight-bits", "2,x"), "comma-separated")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--weight-bits", "2,8"), "doublings")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--method", "qlora"), "method")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--lora-targets", "nope"), "nope")
    _one_line_error(train_cli(*base, "--task", "sst2", "--data-dir", data, "--max-seq-length", "65"), "positions")
    _one_line_error(train_cli("--task", "sst2", "--data-dir", data), "--model", "--output-dir")
    _one_line_error(train_cli("--model", tmp_path / "no-model", "--output-dir", tmp_path / "o", "--task", "sst2",
                              "--data-dir", data), "cannot load")
    (tmp_path / "bad.json").write_text('{"max_step": 3}')
    _one_line_error(train_cli(*base, "--task", "sst2", "--config", tmp_path / "bad.json"), "unknown option 'max_step'")


def test_offline_glue_without_files(tmp_path, tiny_bert_dir, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = train_cli("--model", tiny_bert_dir, "--task", "rte", "--output-dir", tmp_path / "out")
    _one_line_error(result, "could not load GLUE rte", "--data-dir", "--train-file/--validation-file")


@pytest.mark.slow
def test_config_file_classification_pairs_and_existing_output(tmp_path, tiny_bert_dir):
    rows = synthetic_sentiment(40, 3)
    lines = ["first,second,verdict"] + [f"{r['sentence']},the film,{'yes' if r['label'] else 'no'}" for r in rows]
    (tmp_path / "train.csv").write_text("\n".join(lines[:33]) + "\n")
    (tmp_path / "dev.csv").write_text("\n".join(lines[:1] + lines[33:]) + "\n")
    config = {"task": "classification", "train-file": str(tmp_path / "train.csv"),
              "validation_file": str(tmp_path / "dev.csv"), "text_column": "first", "text-pair-column": "second",
              "label-column": "verdict", "max_steps": 50, "batch_size": 8, "max_seq_length": 24,
              "bops_seq_len": 24, "weight_bits": [4, 8, 16], "method": "blora", "calibration_batches": 1,
              "bops_budget": 0.3}
    (tmp_path / "run.json").write_text(json.dumps(config))
    out = tmp_path / "ckpt"
    # The explicit --max-steps beats the file's 50.
    assert_ok(train_cli("--config", tmp_path / "run.json", "--model", tiny_bert_dir, "--max-steps", "2",
                        "--output-dir", out))
    _, meta = load_checkpoint(out)
    assert meta.labels == ["no", "yes"] and meta.task == "classification"
    assert meta.options["optim"]["max_steps"] == 2 and meta.options["optim"]["batch_size"] == 8
    assert meta.config.weight_bits == (4, 8, 16) and meta.max_seq_length == 24 and meta.config.bops_budget == 0.3
    assert json.loads((out / "validation.jsonl").read_text().splitlines()[0])["text_pair"] == "the film"

    again = train_cli("--config", tmp_path / "run.json", "--model", tiny_bert_dir, "--output-dir", out)
    _one_line_error(again, "already holds a complete checkpoint", "--overwrite")


@pytest.mark.slow
def test_stsb_regression(tmp_path, tiny_deberta_dir):
    d = tmp_path / "STS-B"
    d.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = synthetic_sentiment(40, 5)
    lines = [f"{i}\tg\tf\ty\t{i}\ts\ts\t{r['sentence']}\tthe movie\t{4.5 * r['label'] + 0.25}"
             for i, r in enumerate(rows)]
    (d / "train.tsv").write_text("\n".join([header, *lines[:32]]) + "\n")
    (d / "dev.tsv").write_text("\n".join([header, *lines[32:]]) + "\n")
    out = tmp_path / "ckpt"
    assert_ok(train_cli("--model", tiny_deberta_dir, "--data-dir", d, *FAST[2:], "--task", "stsb", "--max-steps", "3",
                        "--output-dir", out))
    model, meta = load_checkpoint(out)
    assert meta.problem_type == "regression" and meta.labels == ["score"]
    assert model.config.num_labels == 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"pearson", "spearman", "loss"}


def test_help_is_fast_and_complete():
    code = ("import sys; from click.testing import CliRunner; from blora_export.cli import main; "
            "r = CliRunner().invoke(main, ['train', '--help']); print(r.output); "
            "sys.exit(2 if 'torch' in sys.modules else r.exit_code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for flag in ("--model", "--task", "--method", "--max-rank", "--bops-budget", "--bops-weight", "--deploy",
                 "--gate-lr", "--gate-optimizer", "--price-lr", "--range-lr", "--fixed-gate-ratio",
                 "--gate-warmup-ratio", "--phase2-lr", "--resume", "--config", "--device", "--embedding-bits",
                 "--lora-targets", "--w-bits", "--a-bits", "--calibration", "--hard-off"):
        assert flag in result.stdout
