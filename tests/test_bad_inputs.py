"""Bad input -> exit status 2 and one line naming the problem and the fix; nothing written, nothing damaged.

test_train_cli.py / test_export_cli.py already cover: unknown task, missing data path, rank 0, batch size 0,
bad width lists, unknown method/targets, missing model directory, missing checkpoint, existing compress output,
bad --validation-file and failed verification. This file covers the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from reliability_support import (
    base_model,
    cli_subprocess,
    copy_checkpoint,
    garble_safetensors_header,
    other_base_model,
    sst2_data,
    train_args,
    tree_hashes,
    truncate_file,
)

from blora_export.cli import main


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True, **kwargs)


def one_line_error(result, *needles, only_line: bool = True) -> str:
    """Exit 2, exactly one `Error:` line (the last; `compress` may log progress lines before it), no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output, result.output
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    if only_line:
        assert len(lines) == 1, result.output
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]
    return errors[0]


# ---- train: model, data, options, output ------------------------------------------------------------------
def _tsv(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join([header, *rows]) + "\n").encode(encoding))


def _sst2_dir(tmp: Path, train_rows=None, header="sentence\tlabel", encoding="utf-8") -> Path:
    d = tmp / "data"
    shutil.copytree(sst2_data(), d)
    if train_rows is not None:
        _tsv(d / "train.tsv", header, train_rows, encoding)
    return d


def _stsb_dir(tmp: Path, bad_score: str) -> Path:
    d = tmp / "STS-B"
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tg\tf\ty\t{i}\ts\ts\tgood movie\tthe film\t{4.0 if i % 2 else 1.0}" for i in range(8)]
    _tsv(d / "dev.tsv", header, rows)
    rows[3] = rows[3].rsplit("\t", 1)[0] + f"\t{bad_score}"
    _tsv(d / "train.tsv", header, rows)
    return d


def _model_with(tmp: Path, config: str | None) -> Path:
    d = tmp / "model"
    d.mkdir()
    if config is not None:
        shutil.copy(base_model() / "vocab.txt", d)
        shutil.copy(base_model() / "tokenizer_config.json", d)
        (d / "config.json").write_text(config)
    return d


def _run_train(tmp: Path, *, model=None, data=None, task="sst2", extra=()):
    args = train_args(tmp / "out", *extra, "--max-steps", "2")
    args[args.index("--model") + 1] = model or base_model()
    args[args.index("--data-dir") + 1] = data or sst2_data()
    args[args.index("--task") + 1] = task
    return invoke("train", *args)


TRAIN_CASES = {
    # model
    "empty-model-dir": (lambda t: {"model": _model_with(t, None)}, ["cannot load", "--model"]),
    "unknown-model-type": (lambda t: {"model": _model_with(t, '{"model_type": "no-such-arch"}')},
                           ["cannot load", "--model"]),
    "malformed-model-config": (lambda t: {"model": _model_with(t, "{not json")}, ["cannot load", "--model"]),
    # data
    "empty-train-file": (lambda t: {"data": _sst2_dir(t, [])}, ["holds no examples"]),
    "wrong-columns": (lambda t: {"data": _sst2_dir(t, ["good\t1", "bad\t0"], header="review\tstars")},
                      ["cannot find the text/label columns", "--text-column"]),
    "non-utf8": (lambda t: {"data": _sst2_dir(t, ["caf\xe9 good\t1", "bad\t0"], encoding="latin-1")},
                 ["not UTF-8", "train.tsv"]),
    "label-outside-set": (lambda t: {"data": _sst2_dir(t, ["good\t1", "bad\t2"])}, ["label '2' is not one of"]),
    "stsb-nan": (lambda t: {"data": _stsb_dir(t, "nan"), "task": "stsb"}, ["not a finite number"]),
    "stsb-inf": (lambda t: {"data": _stsb_dir(t, "inf"), "task": "stsb"}, ["not a finite number"]),
    # options
    "missing-dev-file": (lambda t: {"data": _no_dev(t)}, ["no validation file"]),
    "negative-bops-weight": (lambda t: {"extra": ["--bops-weight", "-1"]}, ["bops weight"]),
    "budget-above-one": (lambda t: {"extra": ["--bops-budget", "1.5"]}, ["bops budget"]),
    "budget-not-a-number": (lambda t: {"extra": ["--bops-budget", "ten percent"]}, ["--bops-budget"]),
    "nan-bops-weight": (lambda t: {"extra": ["--bops-weight", "nan"]}, ["bops weight"]),
    "width-outside-set": (lambda t: {"extra": ["--weight-bits", "4,8,64"]}, ["subset of"]),
    "embedding-width": (lambda t: {"extra": ["--embedding-bits", "16"]}, ["embedding bits"]),
    "init-width-not-allowed": (lambda t: {"extra": ["--weight-bits", "4,8", "--init-weight-bits", "16"]},
                               ["initial width 16"]),
    "zero-lora-alpha": (lambda t: {"extra": ["--lora-alpha", "0"]}, ["lora alpha"]),
    "negative-seed": (lambda t: {"extra": ["--seed", "-1"]}, ["--seed"]),
    "negative-weight-decay": (lambda t: {"extra": ["--weight-decay", "-1"]}, ["--weight-decay"]),
}


def _no_dev(t: Path) -> Path:
    d = _sst2_dir(t)
    (d / "dev.tsv").unlink()
    return d



@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input(case, tmp_path):
    build, needles = TRAIN_CASES[case]
    one_line_error(_run_train(tmp_path, **build(tmp_path)), *needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.state").exists()


def test_train_output_directory_problems(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    one_line_error(invoke("train", *train_args(taken, "--max-steps", "2")), "exists and is not a checkpoint",
                   "--overwrite")
    assert (taken / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_error(invoke("train", *train_args(a_file, "--max-steps", "2")), "is a file")
    one_line_error(invoke("train", *train_args(a_file / "out", "--max-steps", "2")), "cannot write", "--output-dir")
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]


def test_train_error_has_no_traceback_in_a_real_process(tmp_path):
    result = cli_subprocess("train", *train_args(tmp_path / "out", "--max-steps", "2", "--embedding-bits", "3"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("Error: ") and "embedding bits" in result.stderr
    debug = cli_subprocess("--debug", "train", *train_args(tmp_path / "out", "--max-steps", "2",
                                                           "--embedding-bits", "3"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ---- compress: damaged checkpoints, unwritable output, onnx/onnxruntime failures ------------------------------
def _edit_meta(ckpt: Path, **changes) -> None:
    path = ckpt / "checkpoint.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _edit_tensors(ckpt: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt / "trained.safetensors"))
    fn(tensors)
    save_file(tensors, str(ckpt / "trained.safetensors"))


def _first_key(tensors, marker="lora_A"):
    return next(k for k in sorted(tensors) if marker in k)


def _truncate(c: Path) -> None:
    truncate_file(c / "trained.safetensors")


def _bad_header(c: Path) -> None:
    garble_safetensors_header(c / "trained.safetensors")


def _huge_header_length(c: Path) -> None:
    data = bytearray((c / "trained.safetensors").read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    (c / "trained.safetensors").write_bytes(bytes(data))


def _remote_code_tokenizer(c: Path) -> None:
    config = json.loads((c / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (c / "tokenizer_config.json").write_text(json.dumps(config))
    (c / "evil.py").write_text(f"open({str(c / 'PWNED')!r}, 'w').write('x')\n"
                               "from transformers import BertTokenizerFast as EvilTokenizer\n")


def _escaping_symlink(c: Path) -> None:
    outside = c.parent / "outside.safetensors"
    shutil.move(c / "trained.safetensors", outside)
    (c / "trained.safetensors").symlink_to(outside)


def _nan_tensor(t):
    t[_first_key(t)][0, 0] = float("nan")


def _inf_tensor(t):
    t[_first_key(t, "classifier")].view(-1)[0] = float("inf")


def _wrong_shape(t):
    key = _first_key(t)
    t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])


COMPRESS_CASES = {
    "missing-meta": (lambda c: (c / "checkpoint.json").unlink(), ["checkpoint.json is missing"]),
    "missing-weights": (lambda c: (c / "trained.safetensors").unlink(), ["trained.safetensors is missing"]),
    "missing-tokenizer": (lambda c: [(c / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json",
                                                                 "vocab.txt") if (c / n).exists()],
                          ["tokenizer"]),
    "truncated-weights": (_truncate, ["truncated or corrupted"]),
    "corrupted-header": (_bad_header, ["truncated or corrupted"]),
    "huge-header-length": (_huge_header_length, ["truncated or corrupted"]),
    "malformed-json": (lambda c: (c / "checkpoint.json").write_text('{"schema_version": 1,'), ["not valid JSON"]),
    "json-not-object": (lambda c: (c / "checkpoint.json").write_text("[1, 2]"), ["not a JSON object"]),
    "newer-schema": (lambda c: _edit_meta(c, schema_version=3), ["schema version 3", "upgrade"]),
    "older-schema": (lambda c: _edit_meta(c, schema_version=1), ["schema 1", "train it again"]),
    "wrong-field-type": (lambda c: _edit_meta(c, labels="negative"), ["labels", "damaged"]),
    "unknown-field": (lambda c: _edit_meta(c, surprise=1), ["invalid fields"]),
    "nan-tensor": (lambda c: _edit_tensors(c, _nan_tensor), ["NaN or inf"]),
    "inf-tensor": (lambda c: _edit_tensors(c, _inf_tensor), ["NaN or inf"]),
    "wrong-shape": (lambda c: _edit_tensors(c, _wrong_shape), ["has shape"]),
    "missing-tensor": (lambda c: _edit_tensors(c, lambda t: t.pop(_first_key(t))), ["missing"]),
    "other-base-model": (lambda c: _edit_meta(c, base_model=str(other_base_model())), ["does not match"]),
    "missing-base-model": (lambda c: _edit_meta(c, base_model=str(c.parent / "gone")), ["cannot load the base"]),
    "remote-code-tokenizer": (_remote_code_tokenizer, ["--trust-remote-code"]),
    "symlink-outside": (_escaping_symlink, ["outside the checkpoint"]),
}


@pytest.mark.parametrize("case", list(COMPRESS_CASES))
def test_compress_bad_checkpoint(case, tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    damage, needles = COMPRESS_CASES[case]
    damage(ckpt)
    result = invoke("compress", ckpt, "-o", tmp_path / "out", "--no-verify")
    one_line_error(result, *needles, only_line=False)
    assert not (tmp_path / "out").exists() and not (ckpt / "PWNED").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_compress_unwritable_output(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    (tmp_path / "a-file").write_text("x")
    one_line_error(invoke("compress", ckpt, "-o", tmp_path / "a-file" / "out"), "cannot write", "--output-dir",
                   only_line=False)


def _fail_export(monkeypatch):
    from blora_export.export import onnx_export

    def boom(*_a, **_k):
        raise onnx_export.ExportError("torch.onnx could not export the merged model: simulated")

    monkeypatch.setattr(onnx_export, "export_float", boom)


def _fail_checker(monkeypatch):
    import onnx.checker

    def boom(*_a, **_k):
        raise onnx.checker.ValidationError("simulated invalid graph")

    monkeypatch.setattr(onnx.checker, "check_model", boom)


def _fail_onnxruntime(monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from blora_export.export import pipeline

    def boom(*_a, **_k):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : simulated session failure\n  second line")

    monkeypatch.setattr(pipeline, "audit_graph", boom)


@pytest.mark.parametrize("fail, needle", [(_fail_export, "torch.onnx"), (_fail_checker, "onnx"),
                                          (_fail_onnxruntime, "onnxruntime")])
def test_compress_export_failure_keeps_existing_output(fail, needle, tmp_path, monkeypatch):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier, complete export")
    before = tree_hashes(out)
    fail(monkeypatch)
    line = one_line_error(invoke("compress", ckpt, "-o", out, "--overwrite", "--no-verify"), needle,
                          "simulated", only_line=False)
    assert "nothing was written" in line
    assert tree_hashes(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_compress_error_has_no_traceback_in_a_real_process(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    _truncate(ckpt)
    result = cli_subprocess("compress", ckpt, "-o", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert not (tmp_path / "out").exists()

