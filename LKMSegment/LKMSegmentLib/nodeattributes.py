"""The node attributes by which the module recognises the nodes it made (kept in saved scenes)."""

from __future__ import annotations

MAP_ROLE = "LKMSegment.ConfidenceMap"        # segmentation node -> its confidence map volume
# on the volumes the module makes (confidence maps): never offered as an image to segment
MADE_BY_MODULE = "LKMSegment.MadeByModule"


def made_by_module(node) -> bool:
    """A volume this module made (a confidence map), not an image a user loaded. Maps saved by
    earlier versions carry only their ``MAP_ROLE`` attribute."""
    return bool(node.GetAttribute(MADE_BY_MODULE) or node.GetAttribute(MAP_ROLE))

