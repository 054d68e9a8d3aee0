"""Hostile input to `train` -> exit status 2 and one line `Error: ...`, no traceback; the inputs (data, model, config
file, an interrupted run's state) unchanged and no output or state directory left behind.

Groups: --config files, non-finite and absurd numeric options, damaged resume state, damaged model directories,
hostile data files, unusable output directories and a full disk. test_bad_inputs.py covers the plainer cases.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from reliability_support import (
    ROOT,
    base_model,
    garble_safetensors_header,
    sst2_data,
    train_args,
    tree_hashes,
    truncate_file,
)
from test_bad_inputs import invoke, one_line_error

from train.loop import INTERRUPT_ENV


def _train(tmp: Path, *extra, model=None, data=None, task=None, files=None, out=None, env=None):
    """`train` with the reliability defaults (2 steps); model/data/task/--train-file+--validation-file swapped."""
    args = train_args(out or tmp / "out", "--max-steps", "2", *extra)
    args[args.index("--model") + 1] = model or base_model()
    args[args.index("--data-dir") + 1] = data or sst2_data()
    if task:
        args[args.index("--task") + 1] = task
    if files:
        i = args.index("--data-dir")
        args[i:i + 2] = ["--train-file", files[0], "--validation-file", files[1]]
    return invoke("train", *args, env=env)


def _refused(result, tmp: Path, inputs: list[Path], before: list[dict], *needles, only_line: bool = True) -> str:
    """One Error line, the inputs as they were, no output, no state directory and no temporary sibling."""
    line = one_line_error(result, *needles, only_line=only_line)
    assert [tree_hashes(p) if p.is_dir() else p.read_bytes() for p in inputs] == before
    assert not os.path.lexists(tmp / "out") and not os.path.lexists(tmp / "out.state")
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".out")]
    return line


def _snapshot(paths: list[Path]) -> list:
    return [tree_hashes(p) if p.is_dir() else p.read_bytes() for p in paths]


# ---- 1. --config FILE ------------------------------------------------------------------------------------------
CONFIG_CASES = {
    "string-for-int": ('{"warmup_steps": "two"}', ["--config", "warmup_steps", "integer"]),
    "float-for-int": ('{"warmup_steps": 2.5}', ["warmup_steps must be an integer"]),
    "bool-for-int": ('{"warmup_steps": true}', ["warmup_steps must be an integer"]),
    "list-for-float": ('{"lr": [1, 2]}', ["lr must be a number"]),
    "dict-for-float": ('{"lr": {"value": 1}}', ["lr must be a number"]),
    "string-for-float": ('{"lr": "fast"}', ["--config", "lr"]),
    "overflow-to-inf": ('{"lr": 1e400}', ["--lr", "finite", "inf"]),
    "nan-literal": ('{"lora_alpha": NaN}', ["lora alpha", "nan"]),
    "negative-lr": ('{"lr": -0.001}', ["--lr", "> 0"]),
    "int-too-large-for-float": ('{"lr": 1' + "0" * 400 + "}", ["lr", "out of range"]),
    "int-too-large": ('{"save_steps": 1' + "0" * 30 + "}", ["--save-steps", "2^63"]),
    "too-many-digits": ('{"save_steps": 1' + "0" * 5000 + "}", ["cannot read --config"]),
    "list-for-optional-number": ('{"phase2_lr": [0.3]}', ["phase2_lr must be a number or"]),
    "dict-for-targets": ('{"lora_targets": {"q": 1}}', ["lora_targets must be a name or a list"]),
    "int-for-widths": ('{"weight_bits": 8}', ["weight_bits must be a list of integers"]),
    "string-for-flag": ('{"overwrite": "yes"}', ["overwrite must be true or false"]),
    "list-for-flag": ('{"hard_off": [1]}', ["hard_off must be true or false"]),
    "int-for-string": ('{"method": 0}', ["method must be a string"]),
    "unknown-key": ('{"learning_rate": 0.1}', ["unknown option 'learning_rate'"]),
    "config-key": ('{"config": "other.json"}', ["unknown option 'config'"]),
    "duplicate-key": ('{"lr": 0.1, "lr": 0.2}', ["'lr' twice"]),
    "nested-too-deep": ('{"lr": ' + "[" * 100000 + "]" * 100000 + "}", ["nests JSON too deeply"]),
    "array-not-object": ("[1, 2]", ["must hold a JSON object"]),
    "empty-file": ("", ["cannot read --config"]),
    "not-utf8": (b"{\"task\": \"caf\xe9\"}", ["cannot read --config"]),
}


# (keys the command line of _train does not set: an explicit flag beats the file)
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_file(case, tmp_path):
    text, needles = CONFIG_CASES[case]
    config = tmp_path / "options.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    inputs = [config, sst2_data(), base_model()]
    before = _snapshot(inputs)
    _refused(_train(tmp_path, "--config", config), tmp_path, inputs, before, *needles)


def _special_file(path: Path, kind: str) -> Path:
    """`path` as a directory, a FIFO (reading it would block forever) or nothing ("missing")."""
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_config_file_that_is_not_a_file(kind, tmp_path):
    config = _special_file(tmp_path / "options.json", kind)
    needle = {"directory": "is a directory", "fifo": "not a regular file", "missing": "does not exist"}[kind]
    _refused(_train(tmp_path, "--config", config), tmp_path, [], [], "--config", needle)


def test_config_file_lists_are_read_as_lists(tmp_path):
    """A JSON list of target names is a list (it used to become the one name "['query']")."""
    config = tmp_path / "options.json"
    config.write_text('{"lora_targets": ["no_such_module"]}')
    line = one_line_error(_train(tmp_path, "--config", config), "match no Linear")
    assert "['no_such_module']" in line and "\"['no_such_module']\"" not in line, line


# ---- 2. non-finite and absurd numbers ----------------------------------------------------------------------------
FLOAT_OPTIONS = ["--lr", "--lora-alpha", "--gate-lr", "--epochs", "--range-lr", "--weight-decay", "--max-grad-norm",
                 "--warmup-ratio", "--gate-init", "--gate-momentum", "--price-lr", "--gate-warmup-ratio",
                 "--fixed-gate-ratio", "--phase2-lr", "--bops-budget", "--bops-weight"]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize("flag", FLOAT_OPTIONS)
def test_non_finite_float_option(flag, value, tmp_path):
    steps = [] if flag == "--epochs" else ["--max-steps", "2"]  # --max-steps overrides --epochs
    result = invoke("train", *train_args(tmp_path / "out", flag, value, *steps))
    line = _refused(result, tmp_path, [], [], value.lstrip("-"))
    assert flag.strip("-").replace("-", " ") in line.replace("-", " "), line


HUGE = str(10**30)
NUMBER_CASES = {
    "rank-1e9": (["--max-rank", str(10**9)], ["max rank", "65536"]),
    "rank-beyond-int64": (["--max-rank", HUGE], ["max rank"]),
    "rank-above-full-rank": (["--max-rank", "40"], ["--max-rank 40", "full rank (32)", "--max-rank 32"]),
    "batch-size-huge": (["--batch-size", HUGE], ["--batch-size", "2^63"]),
    "seq-length-huge": (["--max-seq-length", HUGE], ["--max-seq-length", "2^63"]),
    "eval-batch-huge": (["--eval-batch-size", HUGE], ["--eval-batch-size"]),
    "warmup-steps-huge": (["--warmup-steps", HUGE], ["--warmup-steps"]),
    "max-steps-huge": (["--max-steps", HUGE], ["--max-steps"]),
    "bops-seq-len-huge": (["--bops-seq-len", HUGE], ["bops seq len"]),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_absurd_numbers(case, tmp_path):
    extra, needles = NUMBER_CASES[case]
    _refused(_train(tmp_path, *extra), tmp_path, [], [], *needles)


def test_divergence_stops_without_a_checkpoint(tmp_path):
    """An lr that makes the weights blow up: one line at the step the loss turned non-finite, nothing written."""
    line = _refused(_train(tmp_path, "--lr", "1e30", "--max-steps", "3"), tmp_path, [], [], "diverged", "--lr",
                    only_line=False)
    assert "nothing was saved" in line


def _poison_last_step(monkeypatch):
    """Finite losses throughout, but the last optimizer step leaves an inf in a trained tensor."""
    from train import optim

    real = optim.Optimizers.step

    def step(self, gates_learn):
        real(self, gates_learn)
        next(p for group in self.main.param_groups for p in group["params"]).data.view(-1)[0] = float("inf")

    monkeypatch.setattr(optim.Optimizers, "step", step)


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    _poison_last_step(monkeypatch)
    _refused(_train(tmp_path, "--max-steps", "1"), tmp_path, [], [], "NaN or inf", "nothing was saved",
             only_line=False)


def test_non_finite_weights_are_never_snapshotted(tmp_path, monkeypatch):
    _poison_last_step(monkeypatch)
    _refused(_train(tmp_path, "--max-steps", "3", "--save-steps", "1"), tmp_path, [], [], "after step 1",
             only_line=False)


# ---- 3. damaged resume state --------------------------------------------------------------------------------------
RESUME_ARGS = ("--max-steps", "4", "--save-steps", "1")


@functools.cache
def interrupted_state() -> Path:
    """The state directory of a run interrupted after step 2 of 4 (snapshot at step 2); copy it before use."""
    out = ROOT / "interrupted" / "out"
    result = invoke("train", *train_args(out, *RESUME_ARGS), env={INTERRUPT_ENV: "2"})
    assert result.exit_code == 130, result.output
    state = Path(str(out) + ".state")
    assert json.loads((state / "latest" / "state.json").read_text())["step"] == 2
    return state


def _edit_record(**changes):
    def edit(latest: Path):
        record = json.loads((latest / "state.json").read_text())
        for key, value in changes.items():
            if value is KeyError:
                record.pop(key)
            else:
                record[key] = value
        (latest / "state.json").write_text(json.dumps(record))
    return edit


def _edit_rng(part: str, value):
    def edit(latest: Path):
        record = json.loads((latest / "state.json").read_text())
        record["rng"][part] = value
        (latest / "state.json").write_text(json.dumps(record))
    return edit


def _truncate(name: str):
    return lambda latest: truncate_file(latest / name)


def _edit_tensors(name: str, fn):
    def edit(latest: Path):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(latest / name))
        fn(tensors)
        save_file(tensors, str(latest / name))
    return edit


def _nan_first(tensors):
    key = next(k for k in sorted(tensors) if tensors[k].is_floating_point() and tensors[k].numel())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")


def _reshape_first(tensors):
    key = next(k for k in sorted(tensors) if tensors[k].numel() > 1)
    tensors[key] = torch.zeros(tensors[key].numel() + 3)


def _empty_groups(latest: Path):
    record = json.loads((latest / "state.json").read_text())
    record["optimizer"]["main"]["param_groups"] = []
    (latest / "state.json").write_text(json.dumps(record))


RESUME_CASES = {
    "step-string": (_edit_record(step="two"), ["'step' is missing or not a JSON int"]),
    "step-bool": (_edit_record(step=True), ["'step'"]),
    "step-float": (_edit_record(step=2.5), ["'step'"]),
    "step-missing": (_edit_record(step=KeyError), ["'step'"]),
    "step-beyond-total": (_edit_record(step=9), ["step 9", "4 steps"]),
    "step-equals-total": (_edit_record(step=4), ["step 4"]),
    "step-zero": (_edit_record(step=0), ["step 0"]),
    "step-negative": (_edit_record(step=-3), ["step -3"]),
    "optimizer-missing": (_edit_record(optimizer=KeyError), ["'optimizer'"]),
    "optimizer-list": (_edit_record(optimizer=[1]), ["'optimizer'"]),
    "optimizer-groups-empty": (_empty_groups, ["damaged"]),
    "rng-string": (_edit_record(rng="x"), ["'rng'"]),
    "numpy-rng-short": (_edit_rng("numpy", ["MT19937", [1, 2], 0, 0, 0.0]), ["damaged"]),
    "python-rng-short": (_edit_rng("python", [3, [1], None]), ["damaged"]),
    "options-list": (_edit_record(options=[1]), ["'options'"]),
    "extras-list": (_edit_record(extras=[1]), ["'extras'"]),
    "price-damaged": (_edit_record(extras={"price": {"value": "x"}}), ["damaged"]),
    "record-list": (lambda latest: (latest / "state.json").write_text("[1]"), ["format"]),
    "record-nested-too-deep": (lambda latest: (latest / "state.json").write_text("[" * 100000 + "]" * 100000),
                               ["unreadable"]),
    "state-json-truncated": (_truncate("state.json"), ["unreadable"]),
    "optimizer-truncated": (_truncate("optimizer.safetensors"), ["unreadable"]),
    "rng-truncated": (_truncate("rng.safetensors"), ["unreadable"]),
    "trained-truncated": (_truncate("trained.safetensors"), ["unreadable"]),
    "rng-tensor-wrong": (_edit_tensors("rng.safetensors", lambda t: t.update(torch_cpu=torch.zeros(3).byte())),
                         ["damaged"]),
    "rng-tensor-missing": (_edit_tensors("rng.safetensors", lambda t: t.pop("torch_cpu")), ["damaged"]),
    "optimizer-tensor-missing": (_edit_tensors("optimizer.safetensors", lambda t: t.pop(sorted(t)[0])), ["damaged"]),
    "optimizer-tensor-reshaped": (_edit_tensors("optimizer.safetensors", _reshape_first), ["damaged", "shape"]),
    "optimizer-nan": (_edit_tensors("optimizer.safetensors", _nan_first), ["NaN or inf"]),
    "trained-nan": (_edit_tensors("trained.safetensors", _nan_first), ["NaN or inf"]),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_damaged_resume_state(case, tmp_path):
    damage, needles = RESUME_CASES[case]
    state = tmp_path / "out.state"
    shutil.copytree(interrupted_state(), state)
    _edit_record(options={**json.loads((state / "latest" / "state.json").read_text())["options"],
                          "output_dir": str(tmp_path / "out")})(state / "latest")  # the same run, moved here
    damage(state / "latest")
    before = tree_hashes(state)
    result = invoke("train", *train_args(tmp_path / "out", *RESUME_ARGS, "--resume"))
    line = one_line_error(result, *needles)
    assert "resume state" in line and "--overwrite" in line, line
    assert tree_hashes(state) == before and not (tmp_path / "out").exists()


# ---- 4. model directories -------------------------------------------------------------------------------------------
def _model_copy(tmp: Path) -> Path:
    return Path(shutil.copytree(base_model(), tmp / "model"))


def _edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def _edit_weights(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def _cut_rows(marker: str, rows: int):
    def fn(tensors):
        key = next(k for k in tensors if marker in k)
        tensors[key] = tensors[key][:rows].clone()
    return fn


def _small_vocab(d: Path) -> None:
    _edit_weights(d, _cut_rows("word_embeddings", 10))
    _edit_config(d, vocab_size=10)


def _few_positions(d: Path) -> None:
    _edit_weights(d, _cut_rows("position_embeddings", 8))
    _edit_config(d, max_position_embeddings=8)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {ROOT / 'PWNED'}",))


def _evil_pickle(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))


def _truncate_weights(d: Path) -> None:
    truncate_file(d / "model.safetensors")


def _garbage_header(d: Path) -> None:
    garble_safetensors_header(d / "model.safetensors")


MODEL_CASES = {
    "vocab-smaller-than-tokenizer": (_small_vocab, ["tokenizer has", "10 rows"]),
    "pickle-with-code": (_evil_pickle, ["cannot load model", "pytorch_model.bin", "refused"]),
    "truncated-safetensors": (_truncate_weights, ["cannot load model"]),
    "garbage-safetensors-header": (_garbage_header, ["cannot load model"]),
    "positions-below-seq-length": (_few_positions, ["--max-seq-length 16", "8 positions"]),
    "config-positions-disagree-with-weights": (lambda d: _edit_config(d, max_position_embeddings=8),
                                               ["cannot load model"]),
    "config-vocab-disagrees-with-weights": (lambda d: _edit_config(d, vocab_size=10), ["cannot load model"]),
    "config-is-a-list": (lambda d: (d / "config.json").write_text("[1]"), ["cannot load"]),
    "config-nested-too-deep": (lambda d: (d / "config.json").write_text("[" * 100000 + "]" * 100000),
                               ["cannot load"]),
    "config-hidden-size-string": (lambda d: _edit_config(d, hidden_size="big"), ["cannot load", "hidden_size"]),
    "tokenizer-config-broken": (lambda d: (d / "tokenizer_config.json").write_text("{"), ["cannot load a tokenizer"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_damaged_model_directory(case, tmp_path):
    damage, needles = MODEL_CASES[case]
    model = _model_copy(tmp_path)
    damage(model)
    inputs = [model, sst2_data()]
    before = _snapshot(inputs)
    _refused(_train(tmp_path, model=model), tmp_path, inputs, before, *needles)
    assert not (ROOT / "PWNED").exists()


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_model_path_that_is_not_a_directory(kind, tmp_path):
    path = tmp_path / "model"
    path.write_text("{}") if kind == "file" else os.mkfifo(path)
    _refused(_train(tmp_path, model=path), tmp_path, [], [], "--model", "is not a directory")


def test_pickle_only_model_loads_with_the_safe_loader(tmp_path):
    """Plain tensors in pytorch_model.bin (no safetensors): torch's weights-only loader reads them."""
    from safetensors.torch import load_file

    model = _model_copy(tmp_path)
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    result = _train(tmp_path, model=model)
    assert result.exit_code == 0, result.output


# ---- 5. data ------------------------------------------------------------------------------------------------------
def _rows(n: int = 16, label=lambda i: i % 2) -> str:
    return "".join(json.dumps({"text": f"w{i} " + ("good" if i % 2 else "bad"), "label": label(i)}) + "\n"
                   for i in range(n))


DEEP_TEXT = '{"text": ' + "[" * 100000 + "]" * 100000 + ', "label": 1}\n'
DEEP_LABEL = '{"text": "a", "label": ' + "[" * 500 + "]" * 500 + "}\n"
SURROGATE_JSON = '{"text": "a \\ud800 b", "label": 1}\n'  # valid JSON, but not Unicode text
SURROGATE_BYTES = b'{"text": "a \xed\xa0\x80 b", "label": 1}\n'  # a surrogate encoded as UTF-8 ("CESU")

FILE_CASES = {  # (train.jsonl, dev.jsonl) for --task classification
    "labels-collide-after-normalisation": (_rows(label=lambda i: "1" if i % 2 else "1.0"), _rows(),
                                           ["train.jsonl", "fewer than two labels"]),
    "nested-too-deep-train": (DEEP_TEXT + _rows(), _rows(), ["train.jsonl", "too deeply"]),
    "nested-too-deep-validation": (_rows(), DEEP_TEXT + _rows(), ["dev.jsonl", "too deeply"]),
    "nested-label-train": (DEEP_LABEL + _rows(), _rows(), ["train.jsonl", "not a single value"]),
    "nested-label-validation": (_rows(), DEEP_LABEL + _rows(), ["dev.jsonl", "not a single value"]),
    "surrogate-train": (SURROGATE_JSON + _rows(), _rows(), ["train.jsonl", "lone surrogate"]),
    "surrogate-validation": (_rows(), SURROGATE_JSON + _rows(), ["dev.jsonl", "lone surrogate"]),
    "encoded-surrogate-train": (SURROGATE_BYTES + _rows().encode(), _rows(), ["train.jsonl", "not UTF-8"]),
    "encoded-surrogate-validation": (_rows(), SURROGATE_BYTES + _rows().encode(), ["dev.jsonl", "not UTF-8"]),
    "empty-validation": (_rows(), "", ["no labelled examples", "dev.jsonl"]),
    "blank-validation": (_rows(), "\n\n", ["no labelled examples", "dev.jsonl"]),
    "unlabelled-validation": (_rows(), '{"text": "a", "label": ""}\n', ["no labelled examples", "dev.jsonl"]),
    "validation-label-unknown": (_rows(), '{"text": "a", "label": 7}\n', ["dev.jsonl", "label 7"]),
    "validation-array-of-numbers": (_rows(), "[1, 2]", ["dev.jsonl", "list of objects"]),
    "too-many-digits": (_rows() + '{"text": "a", "label": 1' + "0" * 5000 + "}\n", _rows(),
                        ["train.jsonl", "not valid JSON"]),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_hostile_data_file(case, tmp_path):
    train, dev, needles = FILE_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    for name, text in (("train.jsonl", train), ("dev.jsonl", dev)):
        (data / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    before = _snapshot([data])
    _refused(_train(tmp_path, task="classification", files=(data / "train.jsonl", data / "dev.jsonl")), tmp_path,
             [data], before, *needles)


def _glue_with(tmp: Path, name: str, kind: str) -> Path:
    d = Path(shutil.copytree(sst2_data(), tmp / "data"))
    path = d / name
    path.unlink()
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        path.write_text("")
    elif kind == "header":
        path.write_text("sentence\tlabel\n")
    elif kind == "surrogate":
        path.write_bytes(b"sentence\tlabel\na \xed\xa0\x80 b\t1\n")
    return d


GLUE_CASES = {
    "validation-is-a-directory": ("dev.tsv", "dir", ["dev.tsv", "is a directory"]),
    "validation-is-a-fifo": ("dev.tsv", "fifo", ["dev.tsv", "not a regular file"]),
    "train-is-a-directory": ("train.tsv", "dir", ["train.tsv", "is a directory"]),
    "train-is-a-fifo": ("train.tsv", "fifo", ["train.tsv", "not a regular file"]),
    "validation-empty": ("dev.tsv", "empty", ["no labelled examples", "dev.tsv"]),
    "validation-header-only": ("dev.tsv", "header", ["no labelled examples", "dev.tsv"]),
    "validation-surrogate": ("dev.tsv", "surrogate", ["dev.tsv", "not UTF-8"]),
}


@pytest.mark.parametrize("case", list(GLUE_CASES))
def test_hostile_glue_directory(case, tmp_path):
    name, kind, needles = GLUE_CASES[case]
    data = _glue_with(tmp_path, name, kind)
    before = _snapshot([data])
    _refused(_train(tmp_path, data=data), tmp_path, [data], before, *needles)


@pytest.mark.parametrize("kind", ["dir", "fifo", "missing"])
def test_validation_file_that_is_not_a_file(kind, tmp_path):
    path = _special_file(tmp_path / "dev.tsv", "directory" if kind == "dir" else kind)
    needle = {"dir": "is a directory", "fifo": "not a regular file", "missing": "--validation-file"}[kind]
    _refused(_train(tmp_path, files=(sst2_data() / "train.tsv", path)), tmp_path, [], [], str(path), needle)


def test_data_dir_that_is_a_file(tmp_path):
    _refused(_train(tmp_path, data=sst2_data() / "train.tsv"), tmp_path, [], [], "--data-dir", "not a directory")


# ---- 6. output ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("below", [False, True])
def test_output_dir_symlink_loop(below, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = loop / "out" if below else loop
    line = one_line_error(invoke("train", *train_args(out, "--max-steps", "2")), "--output-dir")
    assert "symbolic links" in line.lower() or "loop" in line.lower(), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_weights(monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)


def _full_disk_fsync(monkeypatch):
    from blora_export import atomic

    monkeypatch.setattr(atomic, "_fsync_tree", _enospc)


@pytest.mark.parametrize("fill", [_full_disk_weights, _full_disk_fsync])
@pytest.mark.parametrize("save_steps", ["500", "1"])  # the checkpoint; the first resume snapshot
def test_full_disk(fill, save_steps, tmp_path, monkeypatch):
    fill(monkeypatch)
    inputs = [sst2_data(), base_model()]
    before = _snapshot(inputs)
    line = _refused(_train(tmp_path, "--save-steps", save_steps), tmp_path, inputs, before,
                    "No space left on device", only_line=False)
    assert ("checkpoint" if save_steps == "500" else "resume state") in line, line


def test_full_disk_keeps_an_existing_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = _train(tmp_path)
    assert result.exit_code == 0, result.output
    before = tree_hashes(out)
    _full_disk_weights(monkeypatch)
    one_line_error(_train(tmp_path, "--overwrite"), "cannot write the checkpoint", only_line=False)
    assert tree_hashes(out) == before and not (tmp_path / "out.state").exists()


def test_labels_that_differ_only_beyond_float_precision_stay_two_labels(tmp_path):
    """Labels are normalised exactly: 1, 1.0 and "1" are one label, but 10^22 and 10^22 + 1 are two (float merged
    them, so a two-class file trained as one class)."""
    from blora_export.data.load import label_names

    assert label_names([1, 1.0, "1", " 1.0 "]) == ("1",)
    assert len(label_names([str(10**22), str(10**22 + 1)])) == 2
    assert label_names([1e22, "1e22"]) == (str(10**22),)
