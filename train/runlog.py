"""The live training log: JSON lines in the run's state directory, copied into the checkpoint at the end.

It lives beside the resume snapshot rather than in the checkpoint because the checkpoint is written once,
atomically. On --resume the log is cut back to the snapshot's step, so it tells one consistent history.
"""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "metrics.jsonl"


class RunLog:
    def __init__(self, root: Path, enabled: bool):
        self.path = Path(root) / LOG_FILE
        self.enabled = enabled  # only rank 0 writes

    def start(self, resume_step: int | None) -> None:
        """A fresh log, or (resuming) the old one without records after `resume_step`."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in self.records() if resume_step is not None and r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash: everything after it is lost anyway
        return out

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
