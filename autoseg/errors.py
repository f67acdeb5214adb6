"""Errors that autoseg raises for problems the user can fix.

`AutosegError` and its subclasses carry a message that says what was wrong, where, what was
received and how to fix it. The CLI prints them as ``Error: <message>`` and exits with
`exit_code` (2 for usage, configuration and data problems). Anything else is a bug or a
runtime failure and exits 1.
"""


class AutosegError(Exception):
    """Base class of every error autoseg raises for bad input or configuration."""

    exit_code = 2


class ConfigError(AutosegError):
    """A bad option, search space, model name, backbone, loss or input size."""


class DatasetError(AutosegError):
    """A dataset or raw source that cannot be read or converted."""


class BudgetError(AutosegError):
    """A memory or time budget that admits nothing."""


class RunError(AutosegError):
    """A failure while running (no trial completed, a model that would not train).

    Exits 1: the input was valid but the work failed.
    """

    exit_code = 1
