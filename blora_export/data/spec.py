"""DataSpec: where the labelled text is and how to read it (shared by `train` and `eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


class DataError(UserError, ValueError):
    """Data that cannot be read as the task needs it (file, column, label); the message says how to fix it."""


@dataclass
class DataSpec:
    task: str
    data_dir: str | None = None  # GLUE layout (train.tsv, dev.tsv), or train.* / dev.* for 'classification'
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128

    def validate(self) -> DataSpec:
        from .tasks import TASK_NAMES

        if self.task not in TASK_NAMES:
            raise DataError(f"unknown task {self.task!r}; choose one of {list(TASK_NAMES)}")
        files = (self.train_file, self.validation_file)
        if self.data_dir and any(files):
            raise DataError("pass either --data-dir or --train-file/--validation-file, not both")
        for path in (self.data_dir, *files):
            if path and not Path(path).exists():
                raise DataError(f"data path {path} does not exist")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.max_seq_length < 2:
            raise DataError(f"--max-seq-length must be >= 2 (room for the special tokens), got {self.max_seq_length}")
        return self
