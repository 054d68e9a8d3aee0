"""Reading labelled text: GLUE directories, csv/tsv/json/jsonl files, or GLUE from the datasets hub.

Every source ends as the same `Example` lists and a `Task` (columns, label names, metrics).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .spec import DataError, DataSpec
from .tasks import CLASSIFICATION, Task, classification_task, glue_task

EXTENSIONS = (".tsv", ".csv", ".json", ".jsonl")


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: int | float  # class id, or the score for regression

    def to_dict(self) -> dict:
        d = {"text": self.text, "label": self.label}
        if self.text_pair is not None:
            d["text_pair"] = self.text_pair
        return d


@dataclass
class Dataset:
    task: Task
    train: list[Example]
    validation: list[Example]
    skipped: int = 0  # malformed rows (missing fields) left out, as GLUE loaders do for QQP

    @property
    def labels(self) -> list[str]:
        return ["score"] if self.task.is_regression else list(self.task.labels)


# ---- tables --------------------------------------------------------------------------------------
def read_table(path: str | Path, header: bool = True) -> list[dict]:
    """Rows of a .tsv (quoting disabled: GLUE files hold unbalanced quotes), .csv, .json or .jsonl file, UTF-8
    with or without a byte-order mark (the official GLUE files of MRPC start with one)."""
    path = Path(path)
    suffix = path.suffix.lower()
    _check_file(path)
    if suffix not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(EXTENSIONS)}")
    csv.field_size_limit(sys.maxsize)  # long GLUE parse-tree columns (MNLI) exceed the default
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix in (".tsv", ".csv"):
                kw = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
                if not header:
                    return [dict(enumerate(row)) for row in csv.reader(f, **kw)]
                return list(csv.DictReader(f, **kw))
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return _json_rows(path, text, lines=suffix == ".jsonl")


def _check_file(path: Path) -> None:
    if path.is_file():
        return
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; pass a file (or the directory as --data-dir)")
    if path.exists():
        raise DataError(f"data file {path} is not a regular file (a pipe or device); save the data to a file")
    raise DataError(f"data file {path} does not exist")


def _json_rows(path: Path, text: str, lines: bool) -> list[dict]:
    try:
        if not lines:
            try:
                data = json.loads(text)
                rows = data.get("data", data) if isinstance(data, dict) else data
            except json.JSONDecodeError:
                lines = True  # many ".json" files are JSON lines (the datasets library accepts both)
        if lines:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise DataError(f"{path} is not valid JSON or JSON lines ({e})") from None
    except RecursionError:
        raise DataError(f"{path} nests JSON too deeply to be a table of examples") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path} must hold a list of objects (one example each)")
    return rows


def _column(role: str, explicit: str | None, candidates: tuple, available: list, path) -> str | None:
    """The column for `role`: the one the user named, else the first default candidate present."""
    if explicit is not None:
        if explicit not in available:
            raise DataError(f"{path}: no column {explicit!r} (--{role}-column); columns: {available}")
        return explicit
    for c in candidates:
        if c is not None and c in available:
            return c
    return None


def _columns(spec: DataSpec, task: Task | None, rows: list[dict], path) -> tuple[str, str | None, str]:
    available = list(rows[0].keys()) if rows else []
    defaults = (task.text, task.hub_text) if task else ("text", "sentence")
    pair_defaults = (task.text_pair, task.hub_text_pair) if task else ()
    label_defaults = (task.label, "label") if task else ("label",)
    text = _column("text", spec.text_column, defaults, available, path)
    pair = _column("text-pair", spec.text_pair_column, pair_defaults, available, path)
    label = _column("label", spec.label_column, label_defaults, available, path)
    if text is None or label is None:
        raise DataError(f"{path}: cannot find the text/label columns among {available}; "
                         "name them with --text-column and --label-column")
    if task and task.text_pair and pair is None:
        raise DataError(f"{path}: task {task.name} is a sentence-pair task but no second text column was found "
                         f"among {available}; name it with --text-pair-column")
    return text, pair, label


# ---- labels --------------------------------------------------------------------------------------
def label_key(raw) -> str:
    """One spelling per label: 1, 1.0, "1" and " 1 " are the label "1"; true and "True" the label "true".
    Numbers compare exactly (Decimal, not float): "10000000000000000000001" and "1e22" stay two labels."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        return str(raw)
    key = repr(raw) if isinstance(raw, float) else str(raw).strip()
    if key.lower() in ("true", "false"):
        return key.lower()
    try:
        number = Decimal(key)
    except InvalidOperation:
        return key
    if number.is_finite() and number == number.to_integral_value() and number.adjusted() < 64:
        return str(int(number))
    return key


def _label_id(raw, task: Task, where: str) -> int | float:
    if task.is_regression:
        try:
            value = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: label {raw!r} is not a finite number (regression task); fix or drop the row")
        return value
    if isinstance(raw, list | dict):
        raise DataError(f"{where}: label {raw!r:.60} is not a single value")
    key = label_key(raw)
    if key in task.labels:
        return task.labels.index(key)
    if task.name != CLASSIFICATION and key.isdigit() and int(key) < len(task.labels):
        return int(key)  # GLUE files write some labels as class ids (0/1)
    raise DataError(f"{where}: label {raw!r} is not one of {list(task.labels)}")


def label_names(values: list, where: str = "the labels") -> tuple[str, ...]:
    """The label set of a train file in one spelling each (label_key), sorted (numerically when every label is an
    integer); labels that mix booleans and numbers have no one meaning: an error."""
    for v in values:
        if isinstance(v, list | dict):
            raise DataError(f"{where}: label {v!r:.60} is not a single value")
    names = {label_key(v) for v in values}
    numeric = {n for n in names if n.lstrip("-").isdigit()}
    if numeric and names & {"true", "false"}:
        raise DataError(f"{where}: labels mix booleans and numbers ({sorted(names)[:4]}); write them one way")
    if numeric == names:
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _text(value, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} holds {type(value).__name__} {value!r:.40}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: column {column!r} holds text that is not valid Unicode (a lone surrogate)") \
            from None
    return value


def _examples(rows, text, pair, label, task: Task, path) -> tuple[list[Example], int]:
    out, skipped = [], 0
    for i, row in enumerate(rows):
        first, second, y = row.get(text), row.get(pair) if pair else "", row.get(label)
        if first is None or second is None or y is None or str(y).strip() == "":
            skipped += 1  # a malformed or unlabelled row (e.g. the known broken lines of QQP's train.tsv)
            continue
        where = f"{path} row {i + 1}"
        out.append(Example(_text(first, text, where), _text(second, pair, where) if pair else None,
                           _label_id(y, task, where)))
    return out, skipped


# ---- sources -------------------------------------------------------------------------------------
def _find(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for ext in EXTENSIONS:
            if (directory / f"{stem}{ext}").is_file():
                return directory / f"{stem}{ext}"
    return None


def _from_files(spec: DataSpec, train_path: Path, eval_path: Path, task: Task | None) -> Dataset:
    header = task.header if task else True
    train_rows, eval_rows = read_table(train_path, header), read_table(eval_path, header)
    if not train_rows:
        raise DataError(f"{train_path} holds no examples")
    if task and not task.header:  # headerless GLUE file (CoLA): fixed column positions
        text, label = task.positions
        pair = None
    else:
        text, pair, label = _columns(spec, task, train_rows, train_path)
        _columns(spec, task, eval_rows or train_rows, eval_path)
    if task is None:
        task = classification_task(text, pair, label, label_names([r.get(label) for r in train_rows
                                                                   if r.get(label) not in (None, "")],
                                                                  str(train_path)))
        if len(task.labels) < 2:
            raise DataError(f"{train_path}: column {label!r} holds fewer than two labels")
    train, skipped_train = _examples(train_rows, text, pair, label, task, train_path)
    validation, skipped_eval = _examples(eval_rows, text, pair, label, task, eval_path)
    if not train or not validation:
        raise DataError(f"no labelled examples in {train_path if not train else eval_path}")
    return Dataset(task, train, validation, skipped_train + skipped_eval)


def _from_glue_dir(spec: DataSpec, task: Task | None) -> Dataset:
    directory = Path(spec.data_dir)
    if task is None:  # classification from a directory: train.* and dev.* / validation.*
        train, dev = _find(directory, ("train",)), _find(directory, ("dev", "validation"))
    else:
        train, dev = directory / "train.tsv", directory / task.dev_file
    for path, kind in ((train, "train"), (dev, "validation")):
        if path is not None and os.path.lexists(path):
            _check_file(path)  # there, but a directory, a pipe or a dangling link
        if path is None or not path.is_file():
            expected = f"train.tsv and {task.dev_file}" if task else "train.* and dev.* (tsv, csv, json, jsonl)"
            raise DataError(f"--data-dir {directory} has no {kind} file; expected the GLUE layout ({expected})")
    return _from_files(spec, train, dev, task)


def _from_hub(task: Task) -> Dataset:
    try:
        import datasets

        raw = datasets.load_dataset("nyu-mll/glue", task.hub_name)
        splits = (raw["train"], raw[task.hub_validation])
    except Exception as e:  # offline, no such dataset, damaged cache: all end in the same advice
        raise DataError(f"could not load GLUE {task.name} from the Hugging Face hub ({type(e).__name__}); "
                         f"pass local files: --data-dir DIR (GLUE layout: train.tsv, {task.dev_file}) "
                         "or --train-file/--validation-file") from None
    out = []
    for split in splits:
        pair = split[task.hub_text_pair] if task.hub_text_pair else [None] * len(split)
        out.append([Example(t, p, float(y) if task.is_regression else int(y))
                    for t, p, y in zip(split[task.hub_text], pair, split["label"], strict=True)])
    return Dataset(task, out[0], out[1])


def load(spec: DataSpec) -> Dataset:
    """The configured data, truncated to --max-train-samples / --max-eval-samples (first rows, as run_glue)."""
    task = None if spec.task == CLASSIFICATION else glue_task(spec.task)
    if spec.data_dir:
        data = _from_glue_dir(spec, task)
    elif spec.train_file:
        data = _from_files(spec, Path(spec.train_file), Path(spec.validation_file), task)
    else:
        data = _from_hub(task)
    if spec.max_train_samples:
        data.train = data.train[: spec.max_train_samples]
    if spec.max_eval_samples:
        data.validation = data.validation[: spec.max_eval_samples]
    return data


def load_validation(spec: DataSpec, labels: tuple[str, ...] | list[str] | None = None) -> tuple[Task, list[Example]]:
    """Only the validation split (for evaluating a trained model): spec.data_dir's dev/validation file or
    spec.validation_file, read like `load` reads it, truncated to spec.max_eval_samples. For 'classification'
    the label names come from the model (`labels`), not from a train file."""
    task = None if spec.task == CLASSIFICATION else glue_task(spec.task)
    if spec.data_dir:
        directory = Path(spec.data_dir)
        path = _find(directory, ("dev", "validation")) if task is None else directory / task.dev_file
        if path is None or not path.is_file():
            expected = task.dev_file if task else "dev.* or validation.* (tsv, csv, json, jsonl)"
            raise DataError(f"--data-dir {directory} has no validation file; expected {expected}")
    elif spec.validation_file:
        path = Path(spec.validation_file)
    else:
        raise DataError("pass the validation data: --data-dir DIR or --validation-file FILE")
    rows = read_table(path, task.header if task else True)
    if not rows:
        raise DataError(f"{path} holds no examples")
    if task and not task.header:  # headerless GLUE file (CoLA): fixed column positions
        (text, label), pair = task.positions, None
    else:
        text, pair, label = _columns(spec, task, rows, path)
    if task is None:
        if not labels:
            raise DataError("--task classification needs the model's label names to map the file's labels")
        task = classification_task(text, pair, label, tuple(labels))
    examples, _ = _examples(rows, text, pair, label, task, path)
    if not examples:
        raise DataError(f"no labelled examples in {path}")
    return task, examples[: spec.max_eval_samples] if spec.max_eval_samples else examples
