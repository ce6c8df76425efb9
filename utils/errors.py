"""Errors a user can cause. run.py prints their message as one line and exits with `exit_code`."""


class UserError(Exception):
    """A problem the user can fix (missing file, no network, diverged training, ...)."""

    exit_code = 1


class ConfigError(UserError):
    """An invalid configuration: reported before anything is trained or written."""

    exit_code = 2
