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
        from ..config import check_number
        from .tasks import TASK_NAMES

        if self.task not in TASK_NAMES:
            raise DataError(f"unknown task {self.task!r}; choose one of {list(TASK_NAMES)}")
        files = (self.train_file, self.validation_file)
        if self.data_dir and any(files):
            raise DataError("pass either --data-dir or --train-file/--validation-file, not both")
        for option, path in (("--data-dir", self.data_dir), ("--train-file", files[0]),
                             ("--validation-file", files[1])):
            if path and not Path(path).exists():
                raise DataError(f"{option} {path} does not exist")
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise DataError(f"--data-dir {self.data_dir} is not a directory; pass the directory that holds the "
                            "train and dev files (or the files as --train-file/--validation-file)")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_number(f"--{name.replace('_', '-')}", getattr(self, name), 1, integer=True, error=DataError)
        # room for the special tokens
        check_number("--max-seq-length", self.max_seq_length, 2, integer=True, error=DataError)
        return self
