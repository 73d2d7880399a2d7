"""The `ctl` group: every listed job resolves to a real command, and help starts without torch."""
import subprocess
import sys

import click
from click.testing import CliRunner

from jobs.cli import DATA_JOBS, JOBS, command_summary, data, main


def test_every_lazy_command_imports_and_has_help_text():
    ctx = click.Context(main)
    for group, table in ((main, JOBS), (data, DATA_JOBS)):
        for name in table:
            command = group.get_command(ctx, name)
            assert isinstance(command, click.Command), name
            assert command_summary(table[name]) == command.help.strip().splitlines()[0], name


def test_help_lists_every_job():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in [*JOBS, "data"]:
        assert name in result.output


def test_data_commands_start_without_importing_torch():
    code = ("import sys; from jobs.cli import main; main(['data', '--help'], standalone_mode=False); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
