"""gfa-theory: Gradient Fan-in Asymmetry in Pre-LayerNorm residual networks.

See :mod:`gfa_theory.theory.symbolic` for the notation table used throughout the package.
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("gfa-theory")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
