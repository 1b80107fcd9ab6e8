"""The one exception type the command line turns into a clean error line (exit code 2)."""


class UserError(Exception):
    """Bad input from the user (a missing file, a malformed dataset, a bad option)."""
