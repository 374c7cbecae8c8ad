"""Pictures carry a legend (each structure's name in its colour) and show every row's labels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lkm_core.outputs.pictures import LegendEntry, Row, labelled_views_picture, legend_image, write_png

LIVER = (0.8667, 0.5098, 0.3961)
SPLEEN = (0.6157, 0.4235, 0.6353)


def _volume(flip: bool = False):
    """A 40^3 'CT' at 2 mm with two blocks. ``flip``: the same physical image stored with its
    x axis reversed (mirrored array, direction -x, origin at the other end)."""
    grey = np.full((40, 40, 40), -1000.0, np.float32)
    grey[5:35, 5:35, 5:35] = 40.0
    labels = np.zeros(grey.shape, np.uint8)
    labels[10:30, 10:20, 8:18] = 1
    labels[10:30, 22:30, 24:34] = 2
    if flip:
        grey, labels = grey[:, :, ::-1].copy(), labels[:, :, ::-1].copy()
    image, lab = sitk.GetImageFromArray(grey), sitk.GetImageFromArray(labels)
    for im in (image, lab):
        im.SetSpacing((2.0, 2.0, 2.0))
        if flip:
            im.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
            im.SetOrigin((78.0, 0.0, 0.0))
    return image, lab


def _rgb255(color):
    return tuple(int(round(255 * c)) for c in color)


def _has_colour(picture: Image.Image, rgb, box=None) -> bool:
    array = np.asarray(picture.crop(box) if box else picture)
    return bool(np.all(array == np.asarray(rgb, np.uint8), axis=-1).any())


def test_picture_has_a_legend_with_every_structure_in_its_colour(tmp_path):
    image, labels = _volume()
    legend = [LegendEntry("liver", LIVER), LegendEntry("spleen", SPLEEN)]
    picture = labelled_views_picture(image, [Row("Prediction", labels, {1: LIVER, 2: SPLEEN})],
                                     legend)
    key = legend_image(legend)
    right = (picture.width - key.width, 0, picture.width, picture.height)
    for entry in legend:  # the swatches, in the legend column
        assert _has_colour(picture, _rgb255(entry.color), right), entry.name
    # the legend's text is drawn: more than swatch and background colours in that column
    assert len(np.unique(np.asarray(picture.crop(right)).reshape(-1, 3), axis=0)) > 4
    path = write_png(picture, tmp_path / "p.png")
    assert Image.open(path).size == picture.size


def test_rows_stack_and_each_shows_its_own_labels():
    image, labels = _volume()
    empty = sitk.Image(labels)
    empty *= 0
    one_row = labelled_views_picture(image, [Row("a", labels, {1: LIVER, 2: SPLEEN})], [])
    two_rows = labelled_views_picture(
        image, [Row("a", labels, {1: LIVER, 2: SPLEEN}), Row("b", empty, {1: LIVER})], [])
    assert two_rows.height > 1.8 * one_row.height
    lower = (0, two_rows.height // 2 + 20, two_rows.width, two_rows.height)
    assert _has_colour(two_rows, _rgb255(LIVER), (0, 0, two_rows.width, two_rows.height // 2))
    assert not _has_colour(two_rows, _rgb255(LIVER), lower)


def test_stored_orientation_does_not_change_the_picture():
    a = labelled_views_picture(*_picture_args(False))
    b = labelled_views_picture(*_picture_args(True))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _picture_args(flip):
    image, labels = _volume(flip)
    return image, [Row("a", labels, {1: LIVER, 2: SPLEEN})], [LegendEntry("liver", LIVER)]


def test_labels_on_another_grid_are_refused():
    image, labels = _volume()
    other = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    with pytest.raises(ValueError, match="grid"):
        labelled_views_picture(image, [Row("a", labels, {}), Row("b", other, {})], [])
