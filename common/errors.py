"""The project's error types: library code raises them, only the CLI layer turns them into exit codes.

Every error a user can cause or fix is a :class:`CtlError`; its message is one readable line that
names the problem and, where there is one, the next step. ``exit_code`` follows one convention:
2 when the user's input is wrong (an argument, a file handed to a command), 1 when the setting is
(a missing or mismatched artefact, a job that produced nothing usable).

The next step is a :class:`Hint`, kept apart from the message: a template whose ``{option:NAME}`` and
``{step:NAME}`` placeholders name a parameter to change or an operation to run. The library says them in
its own words (``memory_budget``, ``build-index``); the CLI renders them as its flags and commands
(``--memory-budget``, `` `ctl build-index` ``, jobs/cli_errors.py), so no library message names a flag.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

EXIT_FAILURE = 1
EXIT_USAGE = 2

_PLACEHOLDER = re.compile(r"\{(option|step):([a-z_][a-z0-9_-]*)\}")


def library_option(name: str) -> str:
    return name


def library_step(name: str) -> str:
    return f"the {name} step"


@dataclass(frozen=True)
class Hint:
    """What the user can do next: text with {option:NAME} / {step:NAME} placeholders."""

    template: str

    def render(self, option: Callable[[str], str] = library_option, step: Callable[[str], str] = library_step) -> str:
        return _PLACEHOLDER.sub(lambda m: (option if m.group(1) == "option" else step)(m.group(2)), self.template)

    @property
    def options(self) -> list[str]:
        """The parameters the hint names (e.g. ["memory_budget"])."""
        return [m.group(2) for m in _PLACEHOLDER.finditer(self.template) if m.group(1) == "option"]

    @property
    def steps(self) -> list[str]:
        """The operations the hint names (e.g. ["build-index"])."""
        return [m.group(2) for m in _PLACEHOLDER.finditer(self.template) if m.group(1) == "step"]


class CtlError(Exception):
    """An error the user can act on; the CLI prints its message as one line and exits with exit_code.

    `hint` (a Hint or its template) is the next step; str(error) is the message and the hint in the
    library's words, `render(option, step)` the same in another vocabulary (the CLI's)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str = "", hint: Hint | str | None = None):
        self.message = message
        self.hint = Hint(hint) if isinstance(hint, str) else hint
        super().__init__(self.render())

    def render(self, option: Callable[[str], str] = library_option, step: Callable[[str], str] = library_step) -> str:
        if self.hint is None:
            return self.message
        return f"{self.message}; {self.hint.render(option, step)}"

    def __reduce__(self):
        # pickled across processes (spawned workers, Ray tasks) with its hint
        return _rebuild, (type(self), self.message, self.hint, self.__dict__)


def _rebuild(cls, message, hint, state):
    error = cls.__new__(cls)
    CtlError.__init__(error, message, hint)
    error.__dict__.update(state)
    return error


class InputError(CtlError, ValueError):
    """The user's input is wrong: a bad argument value, an unreadable or malformed input file."""

    exit_code = EXIT_USAGE


class ArtifactError(CtlError, ValueError):
    """An artefact a stage needs is missing, incomplete or made by something else (e.g. another checkpoint)."""

    exit_code = EXIT_FAILURE


class NothingProducedError(CtlError):
    """A job ran but produced nothing usable (every image rejected, every download failed)."""

    exit_code = EXIT_FAILURE
