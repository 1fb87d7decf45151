"""Exceptions that mean "the user asked for something invalid".

The CLI turns these into a one-line message and exit code 2; everything else is a bug
and keeps its traceback.
"""


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
