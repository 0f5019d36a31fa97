"""User-facing errors: one line naming the file, tensor or node and what to do (exit code 2)."""


class QdqError(Exception):
    """Bad input or environment.  ``str(err)`` is the whole message shown to the user."""

    exit_code = 2
