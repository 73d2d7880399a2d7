"""The project's error types: library code raises them, only the CLI layer turns them into exit codes.

Every error a user can cause or fix is a :class:`CtlError`; its message is one readable line that
names the problem and, where there is one, the next step. ``exit_code`` follows one convention:
2 when the user's input is wrong (an argument, a file handed to a command), 1 when the setting is
(a missing or mismatched artefact, a job that produced nothing usable).
"""
from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CtlError(Exception):
    """An error the user can act on; the CLI prints its message as one line and exits with exit_code."""

    exit_code = EXIT_FAILURE


class InputError(CtlError, ValueError):
    """The user's input is wrong: a bad argument value, an unreadable or malformed input file."""

    exit_code = EXIT_USAGE


class ArtifactError(CtlError, ValueError):
    """An artefact a stage needs is missing, incomplete or made by something else (e.g. another checkpoint)."""

    exit_code = EXIT_FAILURE


class NothingProducedError(CtlError):
    """A job ran but produced nothing usable (every image rejected, every download failed)."""

    exit_code = EXIT_FAILURE
