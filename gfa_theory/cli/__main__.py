"""``python -m gfa_theory.cli``: the same as the ``gfa`` command."""
import sys

from gfa_theory.cli import main

sys.exit(main())
