"""The CLI error convention: every failure is one line on stderr with the right exit code, no traceback."""
import logging

import click
import pytest
from click.testing import CliRunner

from common.errors import ArtifactError, InputError
from jobs.cli_errors import PROJECT_PACKAGES, OneLineCommand, OneLineGroup, release_logs, render_logs


@click.group("tool", cls=OneLineGroup)
def tool():
    """A tool."""


@tool.group("sub", cls=OneLineGroup)
def sub():
    """Nested."""


@sub.command("run")
@click.option("--n", type=click.IntRange(min=1), default=1)
@click.option("--fail", type=click.Choice(["input", "artifact", "click", "crash"]), default=None)
def run(n, fail):
    """Run."""
    if fail == "input":
        raise InputError("bad\ninput file x.json")
    if fail == "artifact":
        raise ArtifactError("no index at y; run build-index")
    if fail == "click":
        raise click.ClickException("a plain click error")
    if fail == "crash":
        raise ZeroDivisionError("a real bug")
    click.echo(f"ran {n}")


@click.command("single", cls=OneLineCommand)
@click.option("--fail", is_flag=True)
def single(fail):
    if fail:
        raise InputError("nope")


@pytest.mark.parametrize("args, code, line", [
    (["sub", "run", "--fail", "input"], 2, "tool sub run: error: bad input file x.json"),
    (["sub", "run", "--fail", "artifact"], 1, "tool sub run: error: no index at y; run build-index"),
    (["sub", "run", "--fail", "click"], 1, "tool: error: a plain click error"),
    (["sub", "run", "--n", "0"], 2, "tool: error: Invalid value for '--n': 0 is not in the range x>=1. "
                                    "(see tool sub run --help)"),
    (["sub", "nope"], 2, "tool: error: No such command 'nope'. (see tool sub --help)"),
])
def test_errors_are_one_line_with_the_command_and_exit_code(args, code, line):
    result = CliRunner().invoke(tool, args)
    assert result.exit_code == code
    assert result.stderr.splitlines() == [line] and result.stdout == ""


def test_success_and_help_exit_zero():
    assert CliRunner().invoke(tool, ["sub", "run", "--n", "2"]).stdout == "ran 2\n"
    assert CliRunner().invoke(tool, ["--help"]).exit_code == 0


def test_a_single_command_names_itself():
    result = CliRunner().invoke(single, ["--fail"])
    assert (result.exit_code, result.stderr) == (2, "single: error: nope\n")


def test_a_bug_is_not_dressed_up_as_a_user_error():
    result = CliRunner().invoke(tool, ["sub", "run", "--fail", "crash"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_the_cli_renders_library_logs_one_line_each_and_leaves_a_host_s_handlers_alone(monkeypatch, capsys):
    root, ours, theirs = logging.getLogger(), logging.getLogger("jobs.catalog.x"), logging.getLogger("thirdparty.y")
    monkeypatch.setattr(root, "handlers", [])          # as in a console script: nothing renders logs yet
    for logger in (root, *(logging.getLogger(name) for name in PROJECT_PACKAGES)):
        monkeypatch.setattr(logger, "level", logger.level)
    render_logs("ctl")
    ours.info("decoded %d images\non the cpu side", 5)
    ours.debug("not shown")
    theirs.info("not shown either")
    theirs.warning("a library's warning")
    assert capsys.readouterr().err.splitlines() == ["ctl: decoded 5 images on the cpu side",
                                                    "ctl: warning: a library's warning"]
    installed = list(root.handlers)
    render_logs("ctl")                          # a handler is there now: nothing is added twice
    assert root.handlers == installed and len(installed) == 1
    release_logs()                              # a command that configures logging itself (ctl serve)
    assert root.handlers == [] and logging.getLogger("jobs").level == logging.NOTSET
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")
    assert [h.formatter._fmt for h in root.handlers] == ["%(levelname)s %(message)s"]
