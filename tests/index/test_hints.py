"""Library errors carry a structured hint in the library's words; only the CLI renders it as flags and commands."""
from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.errors import CtlError, Hint, InputError
from index.layout import IndexDirError, resolve
from index.update import UpdateError, update_index
from jobs.catalog.update_index import update_index_command
from jobs.cli_errors import cli_command, cli_flag, cli_message

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = [*sorted((ROOT / "index").glob("*.py")), ROOT / "pipeline" / "checkpoint.py"]
CLI_WORDS = re.compile(r"(?<![\w-])--[a-z]|`ctl |\(make [a-z]")


def _raised_strings(path: Path):
    """Every string constant inside a `raise` statement of the file (f-string parts included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    yield node.lineno, inner.value


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_no_library_error_names_a_cli_flag_or_command(path):
    found = [(line, text) for line, text in _raised_strings(path) if CLI_WORDS.search(text)]
    assert not found, f"{path.name}: CLI words in library errors: {found}"


def test_a_hint_speaks_the_library_to_python_and_flags_to_the_cli():
    error = InputError("the budget is too small", hint="raise {option:memory_budget} or run {step:build-index}")
    assert str(error) == "the budget is too small; raise memory_budget or run the build-index step"
    assert cli_message(error) == "the budget is too small; raise --memory-budget or run `ctl build-index`"
    assert error.hint.options == ["memory_budget"] and error.hint.steps == ["build-index"]
    assert cli_flag("embeddings_dir") == "--embeddings" and cli_command("train") == "`ctl train`"
    assert str(CtlError("plain")) == "plain" and cli_message(CtlError("plain")) == "plain"


def test_an_error_keeps_its_hint_through_pickling():
    error = UpdateError("nothing to apply", hint=Hint("give {option:remove}"))
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is UpdateError and back.hint == error.hint and str(back) == str(error)


def test_library_errors_carry_hints_and_the_cli_renders_them(tmp_path):
    with pytest.raises(IndexDirError) as missing:
        resolve(tmp_path / "none")
    assert missing.value.hint.steps == ["build-index"] and "`ctl" not in str(missing.value)
    with pytest.raises(UpdateError) as nothing:
        update_index(tmp_path / "none")
    assert nothing.value.hint.options == ["embeddings_dir", "remove"]
    result = CliRunner().invoke(update_index_command, ["--index-dir", str(tmp_path / "none"), "--remove", "p1"])
    assert result.exit_code == 1 and "does not exist; run `ctl build-index` first" in result.stderr
    result = CliRunner().invoke(update_index_command, ["--index-dir", str(tmp_path / "none")])
    assert "nothing to apply; give --embeddings and/or --remove" in result.stderr
