"""Pictures of segmentations: orthogonal slices with labels overlaid, titled, with a legend.

Every picture the project writes goes through :func:`labelled_views_picture`, so each carries a
legend (every structure shown, by name, in its colour). Text is drawn with Pillow (which Slicer
ships too) using its bundled scalable font.

Slices are shown the radiological way (LPS storage: patient right on the left of the axial
view, anterior up; superior up in coronal and sagittal views), through one centre point shared
by all rows, so a prediction and its reference can be compared view by view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import CONFIDENCE_BANDS  # shared with the Slicer module's overlay
from ..files import atomic_path

# display window (abdomen soft tissue, HU) and label opacity
CT_WINDOW = (-160.0, 240.0)
ALPHA = 0.45
DISPLAY_MM = 1.5  # square display pixels of this size
GAP = 4
FONT_SIZE = 14
BACKGROUND = (0, 0, 0)
TEXT = (235, 235, 235)


@dataclass
class LegendEntry:
    name: str
    color: Sequence[float]  # RGB 0-1


@dataclass
class Row:
    """One row of views: a title and a label image on the grid of the picture's image.

    With ``confidence`` (a uint8 0-100 image on the same grid) the row shows where the model
    is unsure, in the bands of :data:`CONFIDENCE_BANDS`, with the labels as outlines only."""

    title: str
    labels: object  # SimpleITK label image
    colors: dict    # label value -> RGB 0-1
    confidence: object = None




def confidence_legend() -> list:
    return [LegendEntry(text, color) for _, color, text in CONFIDENCE_BANDS]


def _to_display(img2d: np.ndarray, spacing_rows: float, spacing_cols: float) -> np.ndarray:
    """Nearest-neighbour resize of a 2D array (rows, cols, ...) to square DISPLAY_MM pixels."""
    rows = max(1, int(round(img2d.shape[0] * spacing_rows / DISPLAY_MM)))
    cols = max(1, int(round(img2d.shape[1] * spacing_cols / DISPLAY_MM)))
    ri = np.minimum((np.arange(rows) * img2d.shape[0] / rows).astype(int), img2d.shape[0] - 1)
    ci = np.minimum((np.arange(cols) * img2d.shape[1] / cols).astype(int), img2d.shape[1] - 1)
    return img2d[ri][:, ci]


def overlay_rgb(grey: np.ndarray, labels: np.ndarray, colors: dict,
                window: tuple = CT_WINDOW, confidence: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 of a slice (windowed grey) with labels blended in their colours, outlined;
    with ``confidence``, the unsure voxels tinted by band and the labels outlined only."""
    lo, hi = window
    rgb = np.repeat(np.clip((grey - lo) / (hi - lo), 0, 1)[..., None], 3, axis=-1)
    if confidence is not None:
        lower = -1
        for upper, color, _ in CONFIDENCE_BANDS:
            band = (confidence > lower) & (confidence < upper)
            rgb[band] = (1 - ALPHA) * rgb[band] + ALPHA * np.asarray(color, dtype=float)
            lower = upper - 1
    for value, color in colors.items():
        mask = labels == value
        if not mask.any():
            continue
        color = np.asarray(color, dtype=float)
        if confidence is None:
            rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * color
        # outline: mask voxels with a 4-neighbour outside the mask
        inner = np.zeros_like(mask)
        inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                             & mask[1:-1, :-2] & mask[1:-1, 2:])
        rgb[mask & ~inner] = color
    return (rgb * 255 + 0.5).astype(np.uint8)


def display_window(image_array: np.ndarray, modality: str) -> tuple:
    """CT: a soft-tissue window in HU; anything else: the 1st-99th percentile."""
    if modality.upper() == "CT":
        return CT_WINDOW
    lo, hi = np.percentile(image_array, [1, 99])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def _centre(label_arrays: list, values: Sequence[int]) -> np.ndarray | None:
    for labels in label_arrays:
        pts = np.argwhere(np.isin(labels, list(values))) if values else np.empty((0, 3))
        if len(pts) == 0:
            pts = np.argwhere(labels > 0)
        if len(pts):
            return pts.mean(0).round().astype(int)
    return None


def _views_row(grey: np.ndarray, labels: np.ndarray, spacing, centre, colors, window,
               confidence: np.ndarray | None = None) -> np.ndarray:
    sx, sy, sz = spacing
    z, y, x = (int(v) for v in centre)
    cuts = [(lambda a: a[z], sy, sx),                      # axial
            (lambda a: a[:, y, :][::-1], sz, sx),          # coronal, superior up
            (lambda a: a[:, :, x][::-1], sz, sy)]          # sagittal, superior up
    panels = [_to_display(overlay_rgb(cut(grey), cut(labels), colors, window,
                                      None if confidence is None else cut(confidence)), sr, sc)
              for cut, sr, sc in cuts]
    height = max(p.shape[0] for p in panels)
    row = []
    for p in panels:
        pad = height - p.shape[0]
        row += [np.pad(p, ((pad // 2, pad - pad // 2), (0, 0), (0, 0))),
                np.zeros((height, GAP, 3), np.uint8)]
    return np.concatenate(row[:-1], axis=1)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)  # Pillow's bundled scalable font
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def legend_image(entries: Sequence[LegendEntry], height: int | None = None):
    """A column of colour swatches with structure names (a Pillow image)."""
    from PIL import Image, ImageDraw

    font = _font()
    line = FONT_SIZE + 8
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((probe.textlength(e.name, font=font) for e in entries), default=0)
    width = int(text_width) + FONT_SIZE + 24
    picture = Image.new("RGB", (width, max(height or 0, line * len(entries) + 8)), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for i, entry in enumerate(entries):
        top = 6 + i * line
        rgb = tuple(int(round(255 * float(c))) for c in entry.color[:3])
        draw.rectangle([8, top + 2, 8 + FONT_SIZE, top + 2 + FONT_SIZE], fill=rgb, outline=TEXT)
        draw.text((16 + FONT_SIZE, top), entry.name, fill=TEXT, font=font)
    return picture


def labelled_views_picture(image, rows: Sequence[Row], legend: Sequence[LegendEntry],
                           modality: str = "CT", focus_values: Sequence[int] = ()):
    """Axial | coronal | sagittal slices of ``image`` for each row's labels, the row's title
    above it, and the legend on the right. Returns a Pillow RGB image."""
    import SimpleITK as sitk
    from PIL import Image, ImageDraw

    oriented = sitk.DICOMOrient(image, "LPS")
    grey = sitk.GetArrayFromImage(oriented).astype(np.float32)
    label_arrays = [sitk.GetArrayFromImage(sitk.DICOMOrient(r.labels, "LPS")) for r in rows]
    confidences = [None if r.confidence is None else
                   sitk.GetArrayFromImage(sitk.DICOMOrient(r.confidence, "LPS")) for r in rows]
    for r, arr, conf in zip(rows, label_arrays, confidences):
        if arr.shape != grey.shape or (conf is not None and conf.shape != grey.shape):
            raise ValueError(f"the labels of row {r.title!r} are not on the image's grid")
    centre = _centre(label_arrays, focus_values)
    if centre is None:
        centre = np.array(grey.shape) // 2
    window = display_window(grey, modality)
    strips = [_views_row(grey, arr, oriented.GetSpacing(), centre, r.colors, window, conf)
              for r, arr, conf in zip(rows, label_arrays, confidences)]
    font = _font()
    title_h = FONT_SIZE + 10
    views_w = max(s.shape[1] for s in strips)
    views_h = sum(s.shape[0] + title_h for s in strips)
    key = legend_image(legend, views_h)
    picture = Image.new("RGB", (views_w + GAP + key.width, max(views_h, key.height)), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top = 0
    for r, strip in zip(rows, strips):
        draw.text((4, top + 4), r.title, fill=TEXT, font=font)
        picture.paste(Image.fromarray(strip), (0, top + title_h))
        top += title_h + strip.shape[0]
    picture.paste(key, (views_w + GAP, 0))
    return picture


def write_png(picture, path) -> Path:
    """Write a Pillow image atomically (nothing half-written under ``path``)."""

    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        picture.save(str(tmp), format="PNG")
    return path


def stack_pictures(pictures: Sequence) -> object:
    """Pillow images one above the other (left-aligned), with a gap between them."""
    from PIL import Image

    width = max(p.width for p in pictures)
    height = sum(p.height for p in pictures) + GAP * 3 * (len(pictures) - 1)
    out = Image.new("RGB", (width, height), BACKGROUND)
    top = 0
    for p in pictures:
        out.paste(p, (0, top))
        top += p.height + GAP * 3
    return out
