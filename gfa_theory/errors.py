"""Exceptions that mean "the user asked for something invalid", and how entry points report them.

Every command line (``gfa``, ``python -m experiments``, ``python -m figures``) turns these into a
one-line message and exit code 2 through :func:`report_user_errors`; everything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2  # a user mistake
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class GFAError(Exception):
    """Base class for user-facing errors (bad layout, bad config, missing data, ...)."""


class LayoutError(GFAError, ValueError):
    """A residual layout description is malformed."""


class ConfigError(GFAError, ValueError):
    """A config has an unknown key, a wrong type or an inconsistent value."""


class DataError(GFAError, FileNotFoundError):
    """Data files are missing, empty or unreadable."""


class TrainingError(GFAError, RuntimeError):
    """Training stopped for a reason the user must act on (e.g. a non-finite loss)."""


class StorageError(GFAError, OSError):
    """A result file or folder cannot be written: disk full, read-only, no permission, a file
    where a folder should be. Nothing is left half-written."""


class RunStoreError(GFAError):
    """A stored run cannot be reused as it is: a corrupt or foreign file, or a run whose
    recorded numeric environment differs from this process's (delete it or ``--force``)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line (user errors are always reported as exactly one line)."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


def report_user_errors(prog: str, action: Callable[[], int]) -> int:
    """Run ``action``; a :class:`GFAError` becomes ``<prog>: error: ...`` on stderr and exit 2,
    an interrupt ``<prog>: interrupted`` and exit 130. Anything else keeps its traceback."""
    try:
        return int(action() or 0)
    except GFAError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
