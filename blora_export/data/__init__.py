"""Labelled text as users have it: GLUE directories, csv/tsv/json/jsonl files, or GLUE from the datasets hub.

`DataSpec` says where the data is and how to read it; `load` gives the train and validation `Example`s and
the `Task` (columns, label names, metrics), `load_validation` only the validation split (to evaluate a
trained model). Training and `blora-export eval` read data through these alone.
"""

from __future__ import annotations

from .load import Dataset, Example, load, load_validation, read_table
from .spec import DataError, DataSpec
from .tasks import CLASSIFICATION, GLUE, TASK_NAMES, Task, classification_task, glue_task

__all__ = ["CLASSIFICATION", "GLUE", "TASK_NAMES", "DataError", "DataSpec", "Dataset", "Example", "Task",
           "classification_task", "glue_task", "load", "load_validation", "read_table"]
