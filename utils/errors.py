"""Errors a user can cause. run.py prints their message as one line and exits with `exit_code`."""


class UserError(Exception):
    """A problem the user can fix (missing file, no network, diverged training, ...)."""

    exit_code = 1


class DivergedError(UserError):
    """Training's loss became NaN or infinite (a search records the trial as failed and goes on)."""


class ConfigError(UserError):
    """An invalid configuration: reported before anything is trained or written."""

    exit_code = 2


class OutputError(UserError):
    """The results folder cannot be written (full disk, read-only, a file in the way) or is in use."""

    exit_code = 2


class CorruptFileError(UserError):
    """A result file that does not parse or does not match the checksum recorded when it was written."""

    exit_code = 2

    def __init__(self, path, why: str, hint: str = ""):
        self.path, self.why, self.hint = path, why, hint
        super().__init__(f"{path} is corrupt ({why})" + (f"; {hint}" if hint else ""))

    def needing(self, hint: str) -> "CorruptFileError":
        """The same error, telling how to regenerate the file."""
        return CorruptFileError(self.path, self.why, hint)
