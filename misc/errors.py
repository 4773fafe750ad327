"""User-facing errors: one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error the user can fix: bad path, bad file, bad key or bad value.

    The message must name the file, key or shape at fault and say what would be right.
    """


def cli_main(fn: F) -> F:
    """Wrap a script's ``main`` so a :class:`UserError` prints one line and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
