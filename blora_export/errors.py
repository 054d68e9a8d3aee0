"""User errors versus bugs.

Every error a user can fix (a bad option, a damaged file, an unwritable output, a model or graph this tool
cannot handle) is a `UserError`: the command line prints its message as one line `Error: ...` with exit
status 2. Exceptions of the libraries this project drives (onnx, onnxruntime, safetensors, tokenizers, file
I/O) are turned into a UserError where they are expected, with the file or option at fault in the message.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Input or environment the user can fix; the message names the problem and the fix."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run long), or its type's name."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def one_line(e: BaseException) -> str:
    """The whole message with its white space folded into one line, or the type's name."""
    return " ".join(str(e).split()) or type(e).__name__


def file_problem(path: str | Path) -> str | None:
    """Why `path` is not a readable regular file ("does not exist", "is a directory", ...), or None if it is."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "is a directory, not a file"
    return "is not a regular file (a pipe, socket or device)" if path.exists() else "does not exist"
