"""GLUE task registry: files, columns, labels and the metric of each task, plus generic `classification`."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import DataError

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# Longest sequence a checkpoint or deploy.json may ask the tokenizer for: far beyond any encoder's positions, and
# small enough for the tokenizers library (a 1e30 max_length overflows there).
MAX_LENGTH_LIMIT = 1 << 20


@dataclass(frozen=True)
class Task:
    name: str
    text: str  # column of the first text in GLUE's TSV files
    text_pair: str | None  # column of the second text (pair tasks)
    label: str  # label column in the TSV files
    labels: tuple[str, ...]  # class names, index = class id (the Hugging Face datasets order); () = regression
    metric: str  # key of the metric that ranks models (the first of `metrics`)
    metrics: tuple[str, ...]
    hub_text: str = ""  # column names in the Hugging Face datasets copy of GLUE
    hub_text_pair: str | None = None
    dev_file: str = "dev.tsv"
    hub_validation: str = "validation"
    hub_config: str = ""  # the GLUE configuration on the hub (default: the task's name)
    header: bool = True  # CoLA's TSVs have no header: columns source, label, original label, sentence
    positions: tuple[int, ...] = ()  # headerless files: column index of text and label

    @property
    def hub_name(self) -> str:
        return self.hub_config or self.name

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def problem_type(self) -> str:
        return "regression" if self.is_regression else "single_label_classification"

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)


def _pair(name, text, pair, label, labels, metrics, hub=None, **kw) -> Task:
    hub_text, hub_pair = hub or (text, pair)
    return Task(name, text, pair, label, labels, metrics[0], metrics, hub_text, hub_pair, **kw)


GLUE: dict[str, Task] = {
    "cola": Task("cola", "sentence", None, "label", ("unacceptable", "acceptable"), "mcc", ("mcc", "accuracy"),
                 "sentence", header=False, positions=(3, 1)),
    "sst2": _pair("sst2", "sentence", None, "label", ("negative", "positive"), ("accuracy",)),
    "mrpc": _pair("mrpc", "#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"),
                  ("accuracy", "f1"), hub=("sentence1", "sentence2")),
    "qqp": _pair("qqp", "question1", "question2", "is_duplicate", ("not_duplicate", "duplicate"),
                 ("accuracy", "f1")),
    "stsb": _pair("stsb", "sentence1", "sentence2", "score", (), ("pearson", "spearman")),
    "mnli": _pair("mnli", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
                  ("accuracy",), hub=("premise", "hypothesis"), dev_file="dev_matched.tsv",
                  hub_validation="validation_matched"),
    "mnli-mm": _pair("mnli-mm", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
                     ("accuracy",), hub=("premise", "hypothesis"), dev_file="dev_mismatched.tsv",
                     hub_validation="validation_mismatched", hub_config="mnli"),
    "qnli": _pair("qnli", "question", "sentence", "label", ("entailment", "not_entailment"), ("accuracy",)),
    "rte": _pair("rte", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": _pair("wnli", "sentence1", "sentence2", "label", ("not_entailment", "entailment"), ("accuracy",)),
}
CLASSIFICATION = "classification"
TASK_NAMES = (*GLUE, CLASSIFICATION)


def classification_task(text: str, text_pair: str | None, label: str, labels: tuple[str, ...]) -> Task:
    """Any labelled text file: accuracy (and macro F1 when there are more than two classes, F1 otherwise)."""
    metrics = ("accuracy", "f1") if len(labels) == 2 else ("accuracy", "macro_f1")
    return Task(CLASSIFICATION, text, text_pair, label, tuple(labels), "accuracy", metrics, text, text_pair)


def glue_task(name: str) -> Task:
    if name not in GLUE:
        raise DataError(f"unknown task {name!r}; choose one of {list(TASK_NAMES)}")
    return GLUE[name]
