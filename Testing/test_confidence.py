"""Per-voxel confidence and per-structure scores from aggregated class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkm_core.inference.confidence import (FLAG_BELOW, absent, case_score, structure_scores,
                                           voxel_confidence)


@dataclass
class Lab:
    value: int
    name: str


LABELS = [Lab(1, "liver"), Lab(2, "spleen")]


def _class_scores(sharpness: float, spleen_pieces: int = 1, with_spleen: bool = True):
    """Class scores (logits) of three classes on a 30^3 grid: a liver ball and (one or two)
    spleen boxes; ``sharpness`` sets how steeply they change at the outlines (large = sure)."""
    z, y, x = np.mgrid[:30, :30, :30].astype(np.float32)
    liver_sd = 8.0 - np.sqrt((z - 15) ** 2 + (y - 10) ** 2 + (x - 10) ** 2)  # >0 inside
    spleen_sd = np.minimum.reduce([4 - abs(z - 15), 3 - abs(y - 22), 3 - abs(x - 22)])
    if spleen_pieces == 2:
        second = np.minimum.reduce([1.5 - abs(z - 4), 1.5 - abs(y - 22), 1.5 - abs(x - 5)])
        spleen_sd = np.maximum(spleen_sd, second)
    return np.stack([np.zeros_like(z), sharpness * liver_sd,
                     sharpness * spleen_sd if with_spleen else np.full_like(z, -50.0)])


def _softmax(logits):
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def _scores(logits, **kw):
    return structure_scores(logits, np.argmax(logits, 0), LABELS, (2.0, 2.0, 2.0), **kw)


def test_voxel_confidence_is_top_probability_in_percent():
    logits = _class_scores(4.0)
    p = _softmax(logits)
    conf = voxel_confidence(logits)
    assert conf.dtype == np.uint8 and conf.shape == p.shape[1:]
    assert conf.min() >= 33 and conf.max() == 100
    assert abs(int(conf[15, 10, 10]) - round(100 * float(p[:, 15, 10, 10].max()))) <= 1


def test_a_sharp_model_scores_higher_than_a_blurred_one():
    sharp, blurred = _scores(_class_scores(6.0)), _scores(_class_scores(0.6))
    for name in ("liver", "spleen"):
        assert sharp[name]["found"] and blurred[name]["found"]
        assert sharp[name]["score"] > blurred[name]["score"] + 0.1, name
        assert sharp[name]["boundary_confidence"] > blurred[name]["boundary_confidence"]
        assert sharp[name]["uncertain_fraction"] < blurred[name]["uncertain_fraction"]
    assert not sharp["liver"]["flagged"]
    assert case_score(sharp) > case_score(blurred)


def test_stray_pieces_lower_the_score_and_are_counted():
    one, two = _scores(_class_scores(6.0)), _scores(_class_scores(6.0, spleen_pieces=2))
    assert one["spleen"]["components"] == 1 and two["spleen"]["components"] == 2
    assert two["spleen"]["score"] < one["spleen"]["score"]
    assert abs(two["liver"]["score"] - one["liver"]["score"]) < 1e-6


def test_absent_structure_is_kept_apart_from_uncertain_ones():
    """An organ the model did not find (left out of the field of view, removed) has no score and
    does not make its case the least sure one: the case is judged by what was found."""
    with_both = _scores(_class_scores(6.0))
    scores = _scores(_class_scores(6.0, with_spleen=False))
    assert scores["spleen"]["found"] is False and scores["spleen"]["score"] is None
    assert not scores["spleen"]["flagged"] and absent(scores) == ["spleen"]
    assert absent(with_both) == []
    assert case_score(scores) == scores["liver"]["score"] > 0
    # a blurred (unsure) case with every organ still ranks before the sure one missing an organ
    blurred = _scores(_class_scores(0.4))
    assert case_score(blurred) < case_score(scores)


def test_structure_cut_by_the_edge_of_the_image_is_marked():
    logits = _class_scores(6.0)
    whole = _scores(logits)
    assert not whole["liver"]["cut_by_field_of_view"]
    cut = _scores(logits[:, :, 4:, :])     # the liver ball (y 2-18) now starts at the edge
    assert cut["liver"]["cut_by_field_of_view"] and not cut["spleen"]["cut_by_field_of_view"]


def test_volume_outside_the_training_range_halves_the_score():
    p = _class_scores(6.0)
    base = _scores(p)
    liver_ml = base["liver"]["volume_ml"]
    ranged = _scores(p, volume_ranges={"liver": [liver_ml * 3, liver_ml * 5],
                                       "spleen": [0.0, 1e6]})
    assert ranged["liver"]["volume_in_training_range"] is False
    assert abs(ranged["liver"]["score"] - 0.5 * base["liver"]["score"]) < 1e-3
    assert ranged["spleen"]["volume_in_training_range"] is True
    assert ranged["spleen"]["score"] == base["spleen"]["score"]
    assert FLAG_BELOW > 0


def test_morphology_and_pieces_match_simpleitks_filters():
    """The scores' erosion, dilation and connected pieces (scipy.ndimage) give what SimpleITK's
    BinaryErode/BinaryDilate (cross, radius 1) and ConnectedComponent (fully connected) give,
    at the array's edges too."""
    import SimpleITK as sitk
    from scipy import ndimage

    from lkm_core.inference.confidence import _binary, _components

    rng = np.random.default_rng(3)
    for shape in [(20, 24, 28), (1, 30, 30)]:
        mask = ndimage.binary_opening(rng.random(shape) > 0.45) if shape[0] > 1 else \
            rng.random(shape) > 0.5
        mask[0] = True  # a structure cut by the edge
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        for op, sitk_op in (("dilate", sitk.BinaryDilate), ("erode", sitk.BinaryErode)):
            expected = sitk_op(image, [1] * 3, sitk.sitkCross, 0, 1)
            np.testing.assert_array_equal(_binary(mask, op),
                                          sitk.GetArrayFromImage(expected).astype(bool))
        pieces = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))
        counts = np.bincount(pieces.ravel())[1:]
        assert _components(mask) == (counts.size, counts.max() / counts.sum())
