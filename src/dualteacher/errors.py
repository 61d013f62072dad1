"""User-facing errors: each says what is wrong, which file or key, and how to fix it.

The CLI prints the message of a ``DualTeacherError`` without a traceback (unless ``--debug``)
and exits with its ``exit_code``. Anything else is a bug and keeps its traceback.

Exit status, the same for every command: 0 done; 2 the user's input or environment is at
fault (arguments, config, data files, checkpoint, device, a full disk, permissions); 1 a run
failed (training diverged, or an unexpected error with its traceback); 130 / 143 stopped by
SIGINT / SIGTERM after writing a checkpoint; 141 the output pipe was closed.
"""

INPUT_EXIT = 2  # the user's input or environment
RUN_EXIT = 1  # a failure in a run


class DualTeacherError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code = INPUT_EXIT
    label = "error"  # how the CLI introduces the message


class ConfigError(DualTeacherError):
    """Unknown config key, wrong value type, missing config file."""


class DataError(DualTeacherError):
    """Missing, corrupt or inconsistent data files."""


class CheckpointError(DualTeacherError):
    """Unreadable checkpoint, or one made for another model or dataset."""


class BadSampleError(DataError):
    """One sample cannot be used: a missing, unreadable or inconsistent image or mask file.

    ``path`` is the offending file and ``reason`` a short description; ``dualteacher check``
    collects these, and a loader may choose to skip such samples instead of stopping.
    """

    def __init__(self, path, reason: str = "", fix: str = ""):
        if not reason:
            # A DataLoader worker re-raises the error as BadSampleError(formatted traceback):
            # keep the original message, drop the worker's traceback.
            path = str(path).rsplit("BadSampleError: ", 1)[-1].strip()
            super().__init__(path)
        else:
            super().__init__(f"{path}: {reason}" + (f". Fix: {fix}" if fix else ""))
        self.path, self.reason, self.fix = path, reason, fix


class BadValidationFile(BadSampleError):
    """A bad validation file met while validating. Validation files are never skipped
    (``data.skip_bad`` applies to training files), so the hint differs."""


class WriteError(DualTeacherError):
    """An output file could not be written (full disk, quota, permissions): the message names
    the file; no partial file was left (``dualteacher.outputs``)."""


class TrainingStopped(DualTeacherError):
    """A run ended before its last step: a signal (``exit_code`` 130 / 143, a checkpoint was
    written) or a numerical fault (``exit_code`` 1, the last good checkpoint is kept). The
    message says how to resume."""

    def __init__(self, message: str, exit_code: int = RUN_EXIT, label: str = "error"):
        super().__init__(message)
        self.exit_code, self.label = exit_code, label


class RunsFailed(DualTeacherError):
    """Runs trained by ``compare --jobs`` worker processes failed; the message names them and
    shows the end of each one's log. Finished runs are kept."""

    exit_code = RUN_EXIT
