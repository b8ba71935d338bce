"""User-facing errors.

A :class:`BnnError` is a problem with what the user gave us (a file, a layer, an option). The CLI
prints it as one line, ``error: <message>``, and exits with status 2; it never shows a traceback.
Library code raises it with a message that names the file, layer or option and, where it helps,
says what is supported.
"""

from __future__ import annotations


class BnnError(Exception):
    """A bad input: printed as one line by the CLI, exit status 2."""

    exit_code = 2


class ValidationFailed(Exception):
    """A validation ran but did not meet its bar: exit status 1."""

    exit_code = 1
