"""The training stage's one error type: bad input, reported by the CLI as one line with exit status 2."""

from blora_export.errors import UserError


class TrainError(UserError, ValueError):
    """A training input that cannot work (option, file, column, label); the message says how to fix it."""
