"""The command line: the only place that knows argparse (``lkm-segment`` runs :func:`main`)."""

from .root import main  # noqa: F401  (the console script's entry point: lkm_core.cli:main)
