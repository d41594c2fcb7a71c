"""Errors meant for the user: the CLI prints their one-line message and exits with code 2."""


class UserError(Exception):
    """Bad input (config, flag, data file, run directory, checkpoint): message is one line."""
