"""Write a directory atomically: build it in a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


class OutputExistsError(UserError, FileExistsError):
    pass


class OutputNotWritableError(UserError, PermissionError):
    pass


class OutputIsInputError(UserError, FileExistsError):
    """The output is, or contains, one of the command's inputs: replacing it would delete that input."""


def check_not_an_input(target: str | Path, inputs: dict[str, str | Path | None], option: str = "--output-dir") -> None:
    """Refuse an output that is, or contains, an input (checked before anything is written or removed).

    realpath, not Path.resolve: a symbolic-link loop must give this check's answer, not a RuntimeError.
    """
    out = os.path.realpath(target)
    for role, path in inputs.items():
        if path is None or not os.path.lexists(path):
            continue
        found = os.path.realpath(path)
        if found == out or found.startswith(out.rstrip(os.sep) + os.sep):
            what = "is" if found == out else "contains"
            raise OutputIsInputError(f"{option} {target} {what} the {role} {path}; writing there would delete it: "
                                     f"choose another {option}")


def check_writable(target: str | Path) -> None:
    """Fail early (before any work) when `target` cannot be created: its parent is a file, read-only, ..."""
    parent = Path(target).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{Path(target).name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {target} ({e.strerror or e}); choose a writable --output-dir") \
            from None


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`.

    On any exception the temporary directory is removed and `target` is left exactly as it was.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    check_writable(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
