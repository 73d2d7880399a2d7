"""The one-line CLI error convention, as the data tests check it."""
from __future__ import annotations


def one_line_error(result) -> str:
    """A CliRunner result's error: exactly one line on stderr, no traceback anywhere; returned stripped."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
