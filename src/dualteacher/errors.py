"""User-facing errors: each says what is wrong, which file or key, and how to fix it.

The CLI prints the message of a ``DualTeacherError`` without a traceback (unless ``--debug``)
and exits with status 2. Anything else is a bug and keeps its traceback.
"""


class DualTeacherError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(DualTeacherError):
    """Unknown config key, wrong value type, missing config file."""


class DataError(DualTeacherError):
    """Missing, corrupt or inconsistent data files."""


class CheckpointError(DualTeacherError):
    """Unreadable checkpoint, or one made for another model or dataset."""
