"""Errors meant for the user: the CLI prints their one-line message and exits with code 2."""

#: the characters that end a line (``str.splitlines``), each replaced by its escape (``\n``)
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: object) -> str:
    """``str(text)`` with its line breaks escaped, so that it prints as one line (a message can
    quote a user's value or path, and those may hold a newline)."""
    return str(text).translate(_LINE_BREAKS)


class UserError(Exception):
    """Bad input (config, flag, data file, run directory, checkpoint): message is one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(UserError, ValueError):
    """Bad configuration: the message is one line meant for the user (``inductionlab.config``
    re-exports it; it lives here so that the mixers in ``models/`` can raise it without importing
    the config module, which imports them)."""
