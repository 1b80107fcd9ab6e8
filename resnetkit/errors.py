"""The project's own error type: what the command line turns into one clean line (exit code 2).

Anything else that escapes a command is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (a missing file, a malformed dataset, a bad option)."""
