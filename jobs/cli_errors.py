"""The CLI layer's one error convention: every failure is one line on stderr and an exit code, no traceback.

Library code raises the project's own errors (:mod:`common.errors`); commands declare their argument
checks as click parameter types (ranges, choices, paths), so click reports a bad value before any
work starts. Both end here, printed the same way by every console script:

    PROG [SUBCOMMAND]: error: MESSAGE         a CtlError (exit 1 or 2, its exit_code)
    PROG: error: MESSAGE (see PROG --help)    a usage error: bad flag or value (exit 2)

A CtlError's hint (common.errors.Hint) names library parameters and operations; here they become the
flags and commands a user types: option `memory_budget` -> `--memory-budget`, step `build-index` ->
`` `ctl build-index` `` (FLAG_OF and COMMAND_OF hold the names that differ).

Library layers report everything else through `logging`; the console scripts render it (:func:`render_logs`):

    PROG: warning: MESSAGE                    a warning from any library
    PROG: MESSAGE                             an info line from the project's own packages
"""
from __future__ import annotations

import logging
import sys

import click

from common.errors import CtlError

# library parameter -> CLI flag, where the flag is not the parameter's name with dashes
FLAG_OF = {"embeddings_dir": "--embeddings", "out_dir": "--out", "memory_budget_bytes": "--memory-budget",
           "checkpoint": "--checkpoint"}
# library operation -> the command that runs it, where it is not `ctl NAME`
COMMAND_OF: dict[str, str] = {}


def cli_flag(option: str) -> str:
    """The CLI flag of a library parameter (memory_budget -> --memory-budget)."""
    return FLAG_OF.get(option, "--" + option.replace("_", "-"))


def cli_command(step: str) -> str:
    """The command a user types for a library operation (build-index -> `ctl build-index`)."""
    return f"`{COMMAND_OF.get(step, 'ctl ' + step)}`"


def cli_message(exc: CtlError) -> str:
    """The error's one line in the CLI's words: its hint's options as flags, its steps as commands."""
    return one_line(exc.render(option=cli_flag, step=cli_command))


def one_line(message) -> str:
    """Collapse a message onto one line (errors quote paths and values that may hold newlines)."""
    return " ".join(str(message).split())


PROJECT_PACKAGES = ("common", "pipeline", "index", "retrieval", "service", "jobs")


class _CliFormatter(logging.Formatter):
    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{self.prog}: {level}{one_line(record.getMessage())}"


_rendering: list[logging.Handler] = []     # the handler render_logs installed, while it is installed


def render_logs(prog: str) -> None:
    """Show what the library layers log on stderr, one line each: warnings from anything, info lines from the
    project's own packages. A host that already renders logs (a handler on the root logger: pytest, a program
    embedding the command) keeps its own."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter(prog))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in PROJECT_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)
    _rendering.append(handler)


def release_logs() -> None:
    """Undo render_logs, for a command that configures logging its own way (`ctl serve`: times, levels,
    --log-level); a no-op when render_logs installed nothing."""
    root = logging.getLogger()
    while _rendering:
        root.removeHandler(_rendering.pop())
        root.setLevel(logging.WARNING)
        for name in PROJECT_PACKAGES:
            logging.getLogger(name).setLevel(logging.NOTSET)


class OneLineErrors:
    """Mixin for click.Command / click.Group: errors, usage errors included, become one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        prog = prog_name or self.name or "ctl"
        render_logs(prog)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CtlError as exc:
            click.echo(f"{getattr(exc, 'command_path', None) or prog}: error: {cli_message(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog
            click.echo(f"{prog}: error: {one_line(exc.format_message())} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"{prog}: error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(f"{prog}: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class OneLineCommand(OneLineErrors, click.Command):
    """A click command with the one-line error convention."""


class OneLineGroup(OneLineErrors, click.Group):
    """A click group with the one-line error convention (its subcommands' errors included)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CtlError as exc:
            # The innermost group names the subcommand that failed: "ctl data fetch: error: ...".
            if not getattr(exc, "command_path", None) and ctx.invoked_subcommand:
                exc.command_path = f"{ctx.command_path} {ctx.invoked_subcommand}"
            raise
