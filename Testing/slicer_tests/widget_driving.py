"""Driving the real widget code through the Slicer application stand-in: load LKMSegment.py as
Slicer does, pump the event loop until something holds, read segment names, unwrap widgets."""

from __future__ import annotations

import importlib.util
import time

import slicer_app_standin as standin
from slicer_fixtures import REPO

TIMEOUT = 240


def import_module_file():
    spec = importlib.util.spec_from_file_location("LKMSegment", REPO / "LKMSegment" / "LKMSegment.py")
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["LKMSegment"] = module
    spec.loader.exec_module(module)
    return module


def pump(app, until, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not until():
        app.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the panel did not get there in time"


def segments(node):
    seg = node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())}


def raw(wrapped):
    return standin.unwrap(wrapped)


def listed_nodes(combo):
    """The nodes a qMRMLNodeComboBox offers (what its hidden-node filter lets through)."""
    return [combo.nodeFromIndex(i) for i in range(combo.nodeCount())]
