"""Stand-in for the ``slicer`` package in the replica of Slicer's Python: only ``slicer.util``'s
process helpers that the PyTorch extension route uses. No ``app`` attribute: as in PythonSlicer,
not the application (LKMSegmentLib.process.inside_slicer_app is False)."""

from . import util  # noqa: F401  (``import slicer`` gives slicer.util, as in Slicer)
