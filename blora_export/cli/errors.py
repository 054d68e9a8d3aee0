"""The command line's side of errors: a UserError becomes one line `Error: ...` and exit status 2; a bug keeps
its traceback. `blora-export --debug ...` shows the traceback of user errors too."""

from __future__ import annotations

import functools

import click

from ..errors import UserError, one_line


class CommandLineError(click.ClickException):
    """A user error as click shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def user_errors(fn):
    """Run a command, printing any UserError it raises as one line (unless --debug)."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and (ctx.find_root().obj or {}).get("debug"):
                raise
            raise CommandLineError(one_line(e)) from None

    return inner
