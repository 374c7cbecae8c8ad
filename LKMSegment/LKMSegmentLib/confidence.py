"""The engine's confidence on the segments: score and flag tags, and the review pairs.

MRML only (slicer-core and the application alike; no Qt, no ``slicer.app``): the scene is passed.

Each segment the engine made carries its score and flag as segment tags
(``contract.CONFIDENCE_TAG``, ``contract.FLAGGED_TAG``); Slicer keeps segment tags when it
saves a segmentation, so the triage survives a saved scene.
"""

from __future__ import annotations

import vtk

from .enginecontract import contract
from .triage import ReviewPair, StructureConfidence, least_confident_first, parse_flag, parse_score


# -- segment tags -------------------------------------------------------------------------------
def _tag(segment, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def set_segment_confidence(segment, score, flagged) -> None:
    """Store a structure's score (0-1) and flag in its segment tags."""
    score = parse_score(score)
    if score is None:
        return
    segment.SetTag(contract.CONFIDENCE_TAG, f"{score:.4f}")
    segment.SetTag(contract.FLAGGED_TAG, "1" if parse_flag(flagged, score) else "0")


def copy_confidence(source, target, summary_entry: dict | None = None) -> bool:
    """Give ``target`` the confidence of the engine's segment ``source`` (its tags, from a
    .seg.nrrd) or, when the file had none (a plain labelmap result), of the summary's entry for
    that structure. True if a score was set."""
    score = parse_score(_tag(source, contract.CONFIDENCE_TAG))
    if score is not None:
        set_segment_confidence(target, score, _tag(source, contract.FLAGGED_TAG))
        return True
    if summary_entry and parse_score(summary_entry.get("score")) is not None:
        set_segment_confidence(target, summary_entry["score"], summary_entry.get("flagged"))
        return True
    return False


def segment_confidence(segment) -> StructureConfidence:
    score = parse_score(_tag(segment, contract.CONFIDENCE_TAG))
    return StructureConfidence(segment.GetName(), score,
                               parse_flag(_tag(segment, contract.FLAGGED_TAG), score))


def node_confidences(seg_node) -> list[StructureConfidence]:
    """Every segment of a segmentation node with its stored confidence, least sure first."""
    if seg_node is None:
        return []
    segmentation = seg_node.GetSegmentation()
    return least_confident_first(segment_confidence(segmentation.GetNthSegment(i))
                                 for i in range(segmentation.GetNumberOfSegments()))


def review_pairs(scene) -> list[ReviewPair]:
    """(volume, segmentation) pairs of the scene: each segmentation whose reference geometry is a
    scalar volume of the scene, with the least sure segment's score."""
    pairs = []
    for node in scene.GetNodesByClass("vtkMRMLSegmentationNode"):
        volume = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        scored = [s for s in node_confidences(node) if s.score is not None]
        pairs.append(ReviewPair(volume.GetID(), node.GetID(), f"{volume.GetName()} — {node.GetName()}",
                                min((s.score for s in scored), default=None),
                                sum(1 for s in scored if s.flagged)))
    return pairs
