"""--overwrite never deletes an input: an output that is, or contains, an input is refused before anything is
removed (exit 2, one line), and every input stays byte for byte as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reliability_support import base_model, copy_checkpoint, sst2_data, train_args, tree_hashes
from test_bad_inputs import invoke, one_line_error


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _train_inputs(tmp: Path) -> dict[str, Path]:
    """Copies of the model and the data under tmp/inputs (so their parent can be named as an output)."""
    inputs = tmp / "inputs"
    return {"model": _copy(base_model(), inputs / "model"), "data": _copy(sst2_data(), inputs / "data")}


TRAIN_OUTPUTS = {  # the output the user names, from the inputs
    "the data directory": lambda i: i["data"],
    "the model directory": lambda i: i["model"],
    "the parent of both": lambda i: i["data"].parent,
}


@pytest.mark.parametrize("case", list(TRAIN_OUTPUTS))
def test_train_overwrite_refuses_an_input(case, tmp_path):
    inputs = _train_inputs(tmp_path)
    before = tree_hashes(tmp_path / "inputs")
    out = TRAIN_OUTPUTS[case](inputs)
    args = train_args(out, "--max-steps", "1", "--overwrite")
    args[args.index(base_model())] = inputs["model"]
    args[args.index(sst2_data())] = inputs["data"]
    one_line_error(invoke("train", *args), "would delete it")
    assert tree_hashes(tmp_path / "inputs") == before


def test_train_refuses_a_state_directory_that_is_an_input(tmp_path):
    inputs = _train_inputs(tmp_path)
    data_state = inputs["data"].with_name("run.state")  # the state directory of --output-dir .../run
    shutil.move(inputs["data"], data_state)
    before = tree_hashes(tmp_path / "inputs")
    args = train_args(tmp_path / "inputs" / "run", "--max-steps", "1", "--overwrite")
    args[args.index(sst2_data())] = data_state
    one_line_error(invoke("train", *args), "state directory", "would delete it")
    assert tree_hashes(tmp_path / "inputs") == before


def test_compress_overwrite_refuses_an_input(tmp_path):
    inputs = tmp_path / "inputs"
    ckpt = copy_checkpoint(inputs / "ckpt")
    validation = inputs / "examples.jsonl"
    validation.write_text('{"text": "good movie"}\n')
    before = tree_hashes(inputs)
    for out in (ckpt, inputs, validation):
        line = one_line_error(invoke("compress", ckpt, "-o", out, "--overwrite", "--validation-file", validation),
                              "would delete it", only_line=False)
        assert str(out) in line
    assert tree_hashes(inputs) == before


def test_compress_overwrite_refuses_the_base_model(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    model = _copy(base_model(), tmp_path / "models" / "base")
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, "base_model": str(model)}))
    before = tree_hashes(model)
    for out in (model, model.parent):
        one_line_error(invoke("compress", ckpt, "-o", out, "--overwrite", "--no-verify"),
                       "base model directory", "would delete it", only_line=False)
    assert tree_hashes(model) == before
