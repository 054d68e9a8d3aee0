"""Bad input to `eval`, `audit` and `compress` (exported model, deploy.json, tokenizer, data, checkpoint fields,
output races) -> exit status 2 and one `Error:` line naming the file and the fix; nothing written, nothing damaged.

test_bad_inputs.py covers damaged checkpoint files and failed exports; this file covers what reaches `eval` and
`audit`, and what `compress --no-verify` used to accept only for `eval` to fail on it later.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from reliability_support import (
    cli_subprocess,
    copy_checkpoint,
    copy_export,
    exported_model,
    sst2_data,
    tree_hashes,
    truncate_file,
)
from test_bad_inputs import _fail_export, invoke, one_line_error

from blora_export import atomic


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _deploy(out: Path, **changes) -> None:
    _edit_json(out / "deploy.json", **changes)


def _drop(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))


def _replace_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _tokenizer_model(out: Path, **changes) -> None:
    """Change the `model` section of tokenizer.json (a tokenizer that does not belong to the exported model)."""
    path = out / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"].update(changes)
    path.write_text(json.dumps(data))


def _vocabulary_beyond_embeddings(out: Path) -> None:
    """Every word's id far beyond the model's embedding table, as from another model's larger vocabulary."""
    path = out / "tokenizer.json"
    data = json.loads(path.read_text())
    special = {t["content"] for t in data["added_tokens"]}
    data["model"]["vocab"] = {w: i if w in special else i + 100_000 for w, i in data["model"]["vocab"].items()}
    path.write_text(json.dumps(data))


# ---- eval: a damaged compress output ------------------------------------------------------------------------
EVAL_EXPORT_CASES = {
    # model.onnx
    "model-truncated": (lambda o: truncate_file(o / "model.onnx"), ["model.onnx", "onnxruntime can load"]),
    "model-garbage": (lambda o: (o / "model.onnx").write_bytes(b"\x00garbage" * 50),
                      ["model.onnx", "onnxruntime can load"]),
    "model-empty": (lambda o: (o / "model.onnx").write_bytes(b""), ["model.onnx", "onnxruntime can load"]),
    "model-missing": (lambda o: (o / "model.onnx").unlink(), ["model.onnx does not exist", "re-run"]),
    "model-is-directory": (lambda o: _replace_with_dir(o / "model.onnx"), ["model.onnx is a directory"]),
    "model-is-fifo": (lambda o: _replace_with_fifo(o / "model.onnx"), ["model.onnx is not a regular file"]),
    # deploy.json: shape and types
    "deploy-missing": (lambda o: (o / "deploy.json").unlink(), ["deploy.json does not exist"]),
    "deploy-is-directory": (lambda o: _replace_with_dir(o / "deploy.json"), ["deploy.json is a directory"]),
    "deploy-garbage": (lambda o: (o / "deploy.json").write_text("{not json"), ["deploy.json", "not readable JSON"]),
    "deploy-not-utf8": (lambda o: (o / "deploy.json").write_bytes(b'{"labels": "caf\xe9"}'),
                        ["deploy.json", "not readable JSON"]),
    "deploy-deeply-nested": (lambda o: (o / "deploy.json").write_text("[" * 100_000 + "]" * 100_000),
                             ["deploy.json", "not readable JSON"]),
    "deploy-list": (lambda o: (o / "deploy.json").write_text("[1, 2]"), ["deploy.json", "must be an object"]),
    "deploy-no-labels": (lambda o: _drop(o / "deploy.json", "labels"), ["deploy.json", "no field 'labels'"]),
    "deploy-no-max-length": (lambda o: _drop(o / "deploy.json", "max_length"), ["deploy.json", "max_length"]),
    "deploy-unknown-field": (lambda o: _deploy(o, surprise=1), ["deploy.json", "unknown fields"]),
    "labels-string": (lambda o: _deploy(o, labels="negative"), ["deploy.json.labels", "must be a list"]),
    "labels-numbers": (lambda o: _deploy(o, labels=[0, 1]), ["deploy.json.labels[0]", "str"]),
    "labels-empty": (lambda o: _deploy(o, labels=[]), ["deploy.json", "labels"]),
    "labels-duplicate": (lambda o: _deploy(o, labels=["positive", "positive"]), ["deploy.json", "distinct"]),
    "labels-count": (lambda o: _deploy(o, labels=["a", "b", "c"]), ["deploy.json does not describe", "3 labels"]),
    "max-length-string": (lambda o: _deploy(o, max_length="16"), ["deploy.json.max_length", "int"]),
    "max-length-float": (lambda o: _deploy(o, max_length=16.5), ["deploy.json.max_length", "int"]),
    "max-length-1e30": (lambda o: _replace_text(o / "deploy.json", '"max_length": 16', '"max_length": 1e30'),
                        ["deploy.json.max_length"]),
    "max-length-huge-int": (lambda o: _deploy(o, max_length=10**30), ["deploy.json", "max_length", "outside"]),
    "max-length-nan": (lambda o: _replace_text(o / "deploy.json", '"max_length": 16', '"max_length": NaN'),
                       ["deploy.json.max_length"]),
    "max-length-zero": (lambda o: _deploy(o, max_length=0), ["deploy.json", "max_length 0"]),
    "max-length-negative": (lambda o: _deploy(o, max_length=-16), ["deploy.json", "max_length -16"]),
    "max-length-bool": (lambda o: _deploy(o, max_length=True), ["deploy.json.max_length"]),
    "newer-version": (lambda o: _deploy(o, version=2), ["deploy.json", "version 2"]),
    "other-format": (lambda o: _deploy(o, format="onnx deploy"), ["deploy.json", "format 'onnx deploy'"]),
    "unknown-problem-type": (lambda o: _deploy(o, problem_type="ranking"), ["deploy.json", "problem_type"]),
    "regression-with-two-labels": (lambda o: _deploy(o, problem_type="regression"), ["deploy.json", "regression"]),
    "unknown-profile": (lambda o: _deploy(o, profile="turbo"), ["deploy.json", "profile 'turbo'"]),
    "negative-opset": (lambda o: _deploy(o, opset=-3), ["deploy.json", "opset -3"]),
    "unknown-input-name": (lambda o: _deploy(o, input_names=["input_ids", "pixel_values"]),
                           ["deploy.json does not describe", "inputs"]),
    "duplicate-input-names": (lambda o: _deploy(o, input_names=["input_ids", "input_ids"]),
                              ["deploy.json", "input_names"]),
    "unknown-output-name": (lambda o: _deploy(o, output_name="probabilities"),
                            ["deploy.json does not describe", "probabilities"]),
    "model-outside-directory": (lambda o: _deploy(o, model="../model.onnx"), ["deploy.json", "file name inside"]),
    "session-config-number": (lambda o: _deploy(o, session_config={"session.intra_op.allow_spinning": 1}),
                              ["deploy.json.session_config"]),
    "session-config-list": (lambda o: _deploy(o, session_config=[]), ["deploy.json.session_config", "object"]),
    # tokenizer
    "tokenizer-missing": (lambda o: [(o / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                          ["no usable tokenizer", "re-run"]),
    "tokenizer-garbage": (lambda o: (o / "tokenizer.json").write_text("{garbage"), ["no usable tokenizer"]),
    "tokenizer-config-garbage": (lambda o: (o / "tokenizer_config.json").write_text("[1"), ["no usable tokenizer"]),
    "tokenizer-of-another-model": (lambda o: _tokenizer_model(o, vocab={"a": 0}), ["tokenizer", "does not belong"]),
    "vocabulary-beyond-embeddings": (_vocabulary_beyond_embeddings, ["onnxruntime could not run", "tokenizer"]),
}


@pytest.mark.parametrize("case", list(EVAL_EXPORT_CASES))
def test_eval_bad_export(case, tmp_path):
    out = copy_export(tmp_path / "out")
    damage, needles = EVAL_EXPORT_CASES[case]
    damage(out)
    before, data_before = tree_hashes(tmp_path), tree_hashes(sst2_data())
    result = invoke("eval", out, "--task", "sst2", "--data-dir", sst2_data())
    one_line_error(result, *needles, only_line=False)  # may log "N validation examples" before the error
    assert tree_hashes(tmp_path) == before and tree_hashes(sst2_data()) == data_before


# ---- eval: bad data, bad OUT or --ckpt paths -------------------------------------------------------------------
def _file(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def _fifo(tmp: Path) -> Path:
    (tmp / "inputs").mkdir(exist_ok=True)
    os.mkfifo(tmp / "inputs" / "data.jsonl")
    return tmp / "inputs" / "data.jsonl"


def _dir(tmp: Path, name: str) -> Path:
    (tmp / "inputs" / name).mkdir(parents=True)
    return tmp / "inputs" / name


def _validation(path_of):
    return lambda t, out: [out, "--task", "classification", "--validation-file", path_of(t)]


EVAL_DATA_CASES = {
    "validation-file-missing": (_validation(lambda t: t / "none.jsonl"), ["--validation-file", "does not exist"]),
    "validation-file-is-directory": (_validation(lambda t: _dir(t, "data")), ["--validation-file", "is a directory"]),
    "validation-file-is-fifo": (_validation(_fifo), ["--validation-file", "not a regular file"]),
    "validation-file-not-utf8": (_validation(lambda t: _file(t, "d.jsonl", b'{"text": "caf\xe9", "label": 1}\n')),
                                 ["d.jsonl", "not UTF-8"]),
    "validation-file-empty": (_validation(lambda t: _file(t, "d.jsonl", b"")), ["d.jsonl", "no examples"]),
    "validation-file-bad-json": (_validation(lambda t: _file(t, "d.jsonl", b'{"text": ')), ["d.jsonl", "JSON"]),
    "validation-file-unknown-type": (_validation(lambda t: _file(t, "d.parquet", b"PAR1")), ["d.parquet"]),
    "validation-file-unknown-label": (_validation(lambda t: _file(t, "d.jsonl", b'{"text": "ok", "label": "meh"}\n')),
                                      ["'meh'"]),
    "data-dir-is-a-file": (lambda t, out: [out, "--task", "sst2", "--data-dir", _file(t, "dev.tsv", b"x")],
                           ["--data-dir", "is a file"]),
    "data-dir-without-dev-file": (lambda t, out: [out, "--task", "sst2", "--data-dir", _dir(t, "glue")],
                                  ["--data-dir", "dev.tsv"]),
    "out-missing": (lambda t, out: [t / "none", "--task", "sst2", "--data-dir", sst2_data()], ["does not exist"]),
    "out-is-a-file": (lambda t, out: [out / "model.onnx", "--task", "sst2", "--data-dir", sst2_data()],
                      ["model.onnx is not a directory", "--output-dir of `blora-export compress`"]),
    "out-is-a-checkpoint": (lambda t, out: [copy_checkpoint(t / "ckpt"), "--task", "sst2", "--data-dir",
                                            sst2_data()], ["deploy.json does not exist"]),
    "ckpt-is-a-file": (lambda t, out: [out, "--task", "sst2", "--data-dir", sst2_data(), "--ckpt",
                                       out / "model.onnx"], ["checkpoint directory", "is not a directory"]),
    "ckpt-is-an-export": (lambda t, out: [out, "--task", "sst2", "--data-dir", sst2_data(), "--ckpt", out],
                          ["checkpoint.json is missing"]),
    "ckpt-duplicate-labels": (lambda t, out: [out, "--task", "sst2", "--data-dir", sst2_data(), "--ckpt",
                                              _ckpt_with(t, labels=["a", "a"])], ["checkpoint.json", "labels"]),
}


def _ckpt_with(tmp: Path, **changes) -> Path:
    ckpt = copy_checkpoint(tmp / "ckpt")
    _edit_json(ckpt / "checkpoint.json", **changes)
    return ckpt


@pytest.mark.parametrize("case", list(EVAL_DATA_CASES))
def test_eval_bad_data_or_paths(case, tmp_path):
    out = copy_export(tmp_path / "out")
    build, needles = EVAL_DATA_CASES[case]
    args = build(tmp_path, out)
    before, data_before = tree_hashes(tmp_path), tree_hashes(sst2_data())
    one_line_error(invoke("eval", *args), *needles, only_line=False)
    assert tree_hashes(tmp_path) == before and tree_hashes(sst2_data()) == data_before


# ---- compress: checkpoint fields out of range or of unknown values -------------------------------------------
def _blora(ckpt: Path, **changes) -> None:
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["blora"].update(changes)
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))


def _mac_profile(ckpt: Path, **changes) -> None:
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["mac_profile"].update(changes)
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))


def _meta(**changes):
    return lambda c: _edit_json(c / "checkpoint.json", **changes)


CHECKPOINT_FIELD_CASES = {
    "max-seq-length-huge": (_meta(max_seq_length=10**30), ["max_seq_length", "outside"]),
    "max-seq-length-1e30": (_meta(max_seq_length=1e30), ["max_seq_length", "int"]),
    "max-seq-length-zero": (_meta(max_seq_length=0), ["max_seq_length 0"]),
    "max-seq-length-one": (_meta(max_seq_length=1), ["max_seq_length 1"]),
    "max-seq-length-string": (_meta(max_seq_length="128"), ["max_seq_length", "int"]),
    "duplicate-labels": (_meta(labels=["positive", "positive"]), ["labels", "distinct"]),
    "empty-label": (_meta(labels=["", "positive"]), ["labels", "distinct"]),
    "no-labels": (_meta(labels=[]), ["labels", "non-empty"]),
    "unknown-problem-type": (_meta(problem_type="ranking"), ["problem_type 'ranking'"]),
    "regression-with-two-labels": (_meta(problem_type="regression"), ["problem_type regression", "2 labels"]),
    "unknown-task": (_meta(task="sst3"), ["task 'sst3'"]),
    "negative-rank": (lambda c: _blora(c, max_rank=-1), ["blora", "max rank"]),
    "float-rank": (lambda c: _blora(c, max_rank=1e30), ["blora.max_rank", "int"]),
    "unknown-deploy-target": (lambda c: _blora(c, deploy="gpu"), ["blora", "deploy"]),
    "infinite-lora-alpha": (lambda c: _replace_text(c / "checkpoint.json", '"lora_alpha": 16.0',
                                                    '"lora_alpha": Infinity'), ["blora.lora_alpha", "finite"]),
    "flag-as-string": (lambda c: _blora(c, hard_off="no"), ["blora.hard_off", "bool"]),
    "widths-as-string": (lambda c: _blora(c, weight_bits="48"), ["blora.weight_bits", "list"]),
    "profile-seq-len-zero": (lambda c: _mac_profile(c, seq_len=0), ["mac_profile"]),
    "profile-negative-macs": (lambda c: _mac_profile(c, attention=-5), ["mac_profile", "negative"]),
    "profile-macs-as-string": (lambda c: _mac_profile(c, seq_len="16"), ["mac_profile.seq_len", "int"]),
    "unknown-adapted-module": (_meta(adapted=["no.such.module"]), ["does not fit the base model", "no.such.module"]),
    "options-as-list": (_meta(options=[1]), ["options", "must be an object"]),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_FIELD_CASES))
def test_compress_checkpoint_field_out_of_range(case, tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    damage, needles = CHECKPOINT_FIELD_CASES[case]
    damage(ckpt)
    before = tree_hashes(tmp_path)
    line = one_line_error(invoke("compress", ckpt, "-o", tmp_path / "a" / "b" / "out", "--no-verify"), *needles,
                          only_line=False)
    assert "checkpoint.json" in line
    assert tree_hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---- audit ----------------------------------------------------------------------------------------------------
AUDIT_CASES = {
    "missing": (lambda t: t / "none.onnx", ["does not exist"]),
    "directory": (lambda t: _dir(t, "model.onnx"), ["is a directory"]),
    "fifo": (_fifo, ["not a regular file"]),
    "empty-file": (lambda t: _file(t, "model.onnx", b""), ["not a readable ONNX model", "no graph"]),
    "truncated": (lambda t: _file(t, "model.onnx", (exported_model() / "model.onnx").read_bytes()[:5000]),
                  ["model.onnx", "not a readable ONNX model"]),
    "garbage": (lambda t: _file(t, "model.onnx", b"\x00garbage" * 40), ["not a readable ONNX model"]),
}


@pytest.mark.parametrize("case", list(AUDIT_CASES))
def test_audit_bad_model(case, tmp_path):
    build, needles = AUDIT_CASES[case]
    path = build(tmp_path)
    before = tree_hashes(tmp_path)
    one_line_error(invoke("audit", path), *needles)
    assert tree_hashes(tmp_path) == before


def _measured(out: Path) -> dict:
    size = json.loads((out / "audit.json").read_text())["size"]
    return {"onnx_bytes": size["onnx_bytes"], "fp32_onnx_bytes": size["fp32_onnx_bytes"]}


def _size_sibling(**size):
    def damage(out: Path) -> None:
        audit = json.loads((out / "audit.json").read_text())
        audit["size"].update(size)
        (out / "audit.json").write_text(json.dumps(audit))
    return damage


BAD_SIBLINGS = {
    "garbage": lambda o: (o / "audit.json").write_text("{garbage"),
    "list": lambda o: (o / "audit.json").write_text("[]"),
    "deeply-nested": lambda o: (o / "audit.json").write_text("[" * 100_000 + "]" * 100_000),
    "not-utf8": lambda o: (o / "audit.json").write_bytes(b"\xff\xfe{}"),
    "directory": lambda o: _replace_with_dir(o / "audit.json"),
    "size-as-strings": _size_sibling(fp32_onnx_bytes="125000"),
    "negative-fp32-size": _size_sibling(fp32_onnx_bytes=-125000),
    "zero-fp32-size": _size_sibling(fp32_onnx_bytes=0),
    "negative-ratio": _size_sibling(ratio=-0.5),
    "negative-macs": lambda o: _replace_text(o / "audit.json", '"attention_macs": ', '"attention_macs": -'),
}


@pytest.mark.parametrize("case", list(BAD_SIBLINGS))
def test_audit_ignores_an_invalid_sibling_audit_json(case, tmp_path):
    """A sibling audit.json that is not a valid audit is ignored: the size ratio is estimated from the graph."""
    out = copy_export(tmp_path / "out")
    BAD_SIBLINGS[case](out)
    before = tree_hashes(tmp_path)
    result = invoke("audit", out / "model.onnx", "--seq-len", 16, "--json")
    assert result.exit_code == 0, result.output
    size = json.loads(result.stdout)["size"]
    assert size["fp32_onnx_bytes_source"].startswith("estimated") and size["ratio"] > 0
    assert size["fp32_onnx_bytes"] > size["onnx_bytes"] > 0
    assert tree_hashes(tmp_path) == before


def test_audit_uses_a_valid_sibling_audit_json(tmp_path):
    out = copy_export(tmp_path / "out")
    result = invoke("audit", out / "model.onnx", "--seq-len", 16, "--json")
    assert result.exit_code == 0, result.output
    size = json.loads(result.stdout)["size"]
    assert size["fp32_onnx_bytes_source"].startswith("measured")
    assert {k: size[k] for k in ("onnx_bytes", "fp32_onnx_bytes")} == _measured(out)


def test_onnxruntime_log_lines_do_not_precede_the_error(tmp_path):
    """onnxruntime logs its own [E:onnxruntime:...] line before raising; the user sees only ours."""
    too_long = cli_subprocess("audit", exported_model() / "model.onnx", "--seq-len", "999")
    out = copy_export(tmp_path / "out")
    _vocabulary_beyond_embeddings(out)
    mismatched = cli_subprocess("eval", out, "--task", "sst2", "--data-dir", sst2_data())
    for result in (too_long, mismatched):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and "[E:onnxruntime" not in result.stderr, result.stderr
        assert lines[-1].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1, lines


# ---- compress: the output directory -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_compress_output_that_is_not_a_directory(kind, tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    target = tmp_path / "out"
    target.write_text("mine") if kind == "file" else os.mkfifo(target)
    before = tree_hashes(tmp_path)
    one_line_error(invoke("compress", ckpt, "-o", target, "--overwrite", "--no-verify"), "--output-dir",
                   "not a directory", only_line=False)
    assert tree_hashes(tmp_path) == before and os.path.lexists(target)


def test_compress_refuses_an_output_created_while_it_ran(tmp_path, monkeypatch):
    """Two runs to the same new output: the one that finishes second must not replace the first one's."""
    from blora_export.export import pipeline

    ckpt = copy_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    original = pipeline._write_outputs

    def other_run_finishes_first(*args, **kwargs):
        original(*args, **kwargs)
        out.mkdir()
        (out / "model.onnx").write_bytes(b"the other run's export")

    monkeypatch.setattr(pipeline, "_write_outputs", other_run_finishes_first)
    one_line_error(invoke("compress", ckpt, "-o", out, "--no-verify"), "created by another process", "--overwrite",
                   only_line=False)
    assert tree_hashes(out) == {"model.onnx": tree_hashes(out)["model.onnx"]}
    assert (out / "model.onnx").read_bytes() == b"the other run's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # no temporary sibling left


def test_atomic_directory_refuses_a_target_that_appears_meanwhile(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(atomic.OutputExistsError, match="another process"), atomic.atomic_directory(target) as tmp:
        (tmp / "mine").write_text("x")
        target.mkdir()  # even an empty directory: rename(2) would silently replace it
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic.atomic_directory(target, overwrite=True) as tmp:  # --overwrite: replaced, as asked
        (tmp / "mine").write_text("x")
    assert (target / "mine").read_text() == "x"


def test_failed_compress_removes_the_parent_directories_it_created(tmp_path, monkeypatch):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("mine")
    before = tree_hashes(tmp_path)
    _fail_export(monkeypatch)
    one_line_error(invoke("compress", ckpt, "-o", tmp_path / "a" / "b" / "c" / "out", "--no-verify"), "simulated",
                   only_line=False)
    assert tree_hashes(tmp_path) == before and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]


def test_atomic_directory_failure_keeps_pre_existing_parents(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError), atomic.atomic_directory(tmp_path / "a" / "b" / "c" / "out") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("simulated failure")
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []
    with atomic.atomic_directory(tmp_path / "x" / "y" / "out") as tmp:  # success keeps what it made
        (tmp / "done").write_text("x")
    assert (tmp_path / "x" / "y" / "out" / "done").is_file()


def test_atomic_directory_sweeps_stale_temporary_siblings(tmp_path):
    """A killed run leaves `.out.tmp-*`; the next run to the same target removes those older than an hour, and
    keeps fresh ones (a live run), other targets' and `.old-*` ones (train/state.py resumes from those)."""
    hours_ago = time.time() - 2 * atomic.STALE_TMP_SECONDS
    stale, fresh = tmp_path / ".out.tmp-killed", tmp_path / ".out.tmp-live"
    other, old = tmp_path / ".other.tmp-killed", tmp_path / ".out.old-previous"
    for d in (stale, fresh, other, old):
        d.mkdir()
        (d / "model.onnx").write_text("partial")
    for d in (stale, other, old):
        os.utime(d / "model.onnx", (hours_ago, hours_ago))
        os.utime(d, (hours_ago, hours_ago))
    with atomic.atomic_directory(tmp_path / "out") as tmp:
        (tmp / "model.onnx").write_text("complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name, old.name, "out"])


def test_compress_nested_output_failing_early_leaves_nothing(tmp_path):
    """check_writable probes the output's parent: it must not leave the directories it made for the probe."""
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    (ckpt / "checkpoint.json").write_text("[1]")
    one_line_error(invoke("compress", ckpt, "-o", tmp_path / "a" / "b" / "out"), "not a JSON object",
                   only_line=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
