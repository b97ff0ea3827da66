"""Errors in what a user gave (config, data, workdir, files), as opposed to bugs.

`python -m prime_jax.main` prints a `UserError` as one line, `error: <message>`, and exits with
status 2; any other exception is a bug and keeps its traceback. Both subclass the built-in types
callers already catch (ValueError, FileNotFoundError).
"""

from __future__ import annotations


class UserError(ValueError):
  """A value the user can fix; the message names it and what would be accepted."""


class MissingInput(UserError, FileNotFoundError):
  """A file or directory the user must create first; the message names the command that does."""
