"""The errors a user can cause, and the one wrapper that turns them into one line.

Every command (``fedvssl.main``, ``fedvssl.evaluate``, ``fedvssl.prepare``,
``fedvssl.convert``) runs under :func:`one_line_errors`: bad input ends the process
with ``fedvssl: error: <message>`` on stderr and exit status 2, a run that could
not finish with status 1, and no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class ConfigError(ValueError):
    """A bad configuration value; its message is one line naming the key."""


class DataError(ValueError):
    """A missing or malformed dataset file, or too many unusable videos; one line naming the file."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; one line naming the file."""


class RunError(RuntimeError):
    """The federated run could not finish; the message is one line."""


# Every error a user can cause: each ends a command with one line (a sweep job: that job only).
USER_ERRORS = (ConfigError, DataError, CheckpointError, RunError)


def one_line_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, DataError, CheckpointError) as e:
            print(f"fedvssl: error: {e}", file=sys.stderr)
            sys.exit(2)
        except RunError as e:
            print(f"fedvssl: error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
