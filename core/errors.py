"""Errors the user can act on. The CLI turns each into one red line and an exit code.

Anything else escaping the core is a bug and is reported as an internal error.
"""


class LlmtoolError(Exception):
    """A failure the user can fix (bad file, missing package); exit code 1."""

    exit_code = 1


class UsageError(LlmtoolError):
    """The command was called wrongly (bad value, conflicting options); exit code 2."""

    exit_code = 2


class ModelError(LlmtoolError):
    """A model reference that cannot be resolved or loaded; exit code 1."""
