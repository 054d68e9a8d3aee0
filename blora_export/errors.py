"""User-facing errors: one line that names the problem and the fix, exit status 2, no traceback."""

from __future__ import annotations

import functools

import click


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run long), or its type's name."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class UserError(click.ClickException):
    """Bad input: printed as one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def user_errors(*kinds: type[BaseException]):
    """Turn the listed exception types raised inside a command into one-line UserErrors.

    With --debug (ctx.obj["debug"]) the traceback is shown instead.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except kinds as e:
                ctx = click.get_current_context(silent=True)
                if ctx is not None and (ctx.find_root().obj or {}).get("debug"):
                    raise
                message = " ".join(str(e).split()) or type(e).__name__
                raise UserError(message) from None

        return inner

    return wrap
