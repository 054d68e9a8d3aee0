"""Write a directory atomically: build it in a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
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
    """Fail early (before any work) when `target` cannot be created: its parent is a file, read-only, ...
    Leaves nothing behind: parent directories made for the probe are removed again."""
    target = Path(target).resolve()
    try:
        created = _make_parents(target)
        try:
            os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent))
        finally:
            _remove_created(created)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {target} ({e.strerror or e}); choose a writable --output-dir") \
            from None


# A temporary sibling untouched this long was left by a killed run (a live one is written within minutes).
STALE_TMP_SECONDS = 3600


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`.

    On any exception the temporary directory, and the parent directories this call created, are removed and
    `target` is left exactly as it was. Without `overwrite`, a `target` that appears while the caller writes
    (another run to the same output) is refused, not replaced.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    check_writable(target)
    created = _make_parents(target)
    _sweep_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        _commit(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    raced = OutputExistsError(f"{target} was created by another process while this run was writing it (two runs "
                              "to the same output?); it was left as it is: pass --overwrite to replace it")
    if os.path.lexists(target):
        if not overwrite:
            raise raced
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:  # it appeared after the check above (rename refuses a file or a non-empty directory)
        if os.path.lexists(target):
            raise raced from None
        raise


def _make_parents(target: Path) -> list[Path]:
    """Create the missing parent directories of `target`; return those this call made, deepest first."""
    missing = []
    parent = target.parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    created = []
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made by a concurrent run: not ours to remove
                directory.mkdir()
                created.insert(0, directory)
    except OSError:
        _remove_created(created)
        raise
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove directories made by _make_parents, deepest first; rmdir only removes empty ones, so nothing another
    process put there (and no directory that existed before) is ever deleted."""
    for directory in created:
        try:
            os.rmdir(directory)
        except OSError:
            return


def _sweep_stale_tmp(target: Path) -> None:
    """Remove `target`'s temporary siblings left by killed runs (the .old- ones may hold the only complete copy:
    train/state.py resumes from them, so they stay)."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        try:
            touched = max([tmp.lstat().st_mtime, *(p.lstat().st_mtime for p in tmp.iterdir())])
            if touched < cutoff:
                shutil.rmtree(tmp)
        except OSError:  # removed meanwhile, not a directory, not ours to remove
            continue


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
