"""Whether a faster inference path keeps a model's labels, and pays: each case segmented the
reference way (nnU-Net's exact path: fp32, nnU-Net's tiling, the nonzero crop) and with one
speed-up at a time (bf16 on the CPU, the fitted tiling, the body crop), the label images
compared structure by structure (Dice on the input grid), and the network times summed.

A speed-up whose structures all keep Dice >= 0.99, and whose network ran in at most 0.9 of the
reference's time, may be recorded in the model's model.json (``inference``: cpu_precision,
tiling, crop); ``auto`` then runs it for that model. Structures smaller than ``min_volume_ml``
in both runs are reported but not judged: on a few voxels one voxel more or less moves Dice by
several hundredths, whatever the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from ..bundle import INFERENCE_CHOICES, Bundle
from ..inference.predictor import Predictor
from ..inference.preprocessing import takes_body_crop
from .reading import dice

MIN_DICE = 0.99
MIN_VOLUME_ML = 1.0
MAX_TIME_RATIO = 0.9   # the speed-up's network time over the reference's; above it it buys little
# each speed-up: (the model.json option it sets, the Predictor keyword, its faster value)
SPEEDUPS = {
    "precision": ("cpu_precision", "precision", "bf16"),
    "tiling": ("tiling", "tiling", "fit"),
    "crop": ("crop", "crop", "body"),
}
REFERENCE = {keyword: INFERENCE_CHOICES[option][1] for option, keyword, _ in SPEEDUPS.values()}


@dataclass
class StructureAgreement:
    name: str
    reference_ml: float     # the structure's volume in the reference labels
    dice: float             # reference vs speed-up; 1.0 where neither labels it
    voxels_differing: int
    judged: bool            # large enough for its Dice to say something


@dataclass
class CaseAgreement:
    case: str
    reference_network_s: float
    network_s: float
    ran: bool               # the speed-up really ran (not refused by bf16's self-check)
    structures: list = field(default_factory=list)

    @property
    def min_judged_dice(self) -> float:
        return min((s.dice for s in self.structures if s.judged), default=1.0)


def compare_structures(reference: np.ndarray, other: np.ndarray, bundle: Bundle, voxel_ml: float,
                       min_volume_ml: float = MIN_VOLUME_ML) -> list:
    """Per structure of ``bundle``: Dice of the two label arrays and how many voxels differ;
    judged where either run labels at least ``min_volume_ml`` of it."""
    out = []
    for label in bundle.labels:
        a, b = reference == label.value, other == label.value
        value = dice(a, b)
        larger_ml = max(int(a.sum()), int(b.sum())) * voxel_ml  # one found by a run only counts
        out.append(StructureAgreement(label.name, round(float(a.sum()) * voxel_ml, 3),
                                      1.0 if np.isnan(value) else round(value, 4),
                                      int(np.logical_xor(a, b).sum()),
                                      larger_ml >= min_volume_ml))
    return out


def applicable(bundle: Bundle) -> list:
    """The speed-ups this model can take: the body crop needs CT intensities."""
    return [name for name in SPEEDUPS if name != "crop" or takes_body_crop(bundle.normalization)]


def _ran(result, keyword: str, value: str) -> bool:
    if keyword == "precision":
        return result.precision == value
    if keyword == "tiling":
        return result.tiling.get("mode") == value
    return (result.tiling.get("crop") or {}).get("mode") == value


def compare(bundle: Bundle, cases: Iterable, speedups: list, *, threads: int | None = None,
            quick: bool = False, min_volume_ml: float = MIN_VOLUME_ML) -> dict:
    """``cases``: (name, SimpleITK image) pairs. Segments each the reference way, then once per
    speed-up (only that option changed), on the CPU; the first case once more before, untimed.
    Returns {speed-up: [CaseAgreement]}."""
    found = {name: [] for name in speedups}

    def segment(image, name, **changed):
        options = {**REFERENCE, **changed}
        predictor = Predictor(bundle, device="cpu", threads=threads, quick=quick,
                              confidence=False, **options)
        result = predictor.predict_image(image, case=name)
        return result, sitk.GetArrayViewFromImage(result.labels)

    for index, (name, image) in enumerate(cases):
        if index == 0:  # the process's first run pays one-time costs (kernel choice, caches)
            segment(image, name)
        reference, reference_labels = segment(image, name)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        for speedup in speedups:
            _, keyword, value = SPEEDUPS[speedup]
            result, labels = segment(image, name, **{keyword: value})
            structures = compare_structures(reference_labels, labels, bundle, voxel_ml,
                                            min_volume_ml)
            found[speedup].append(CaseAgreement(
                name, round(reference.timings["network"], 2), round(result.timings["network"], 2),
                _ran(result, keyword, value), structures))
    return found


def lowest_dice(cases: list) -> float:
    """The lowest judged Dice over the cases (1.0 when nothing was judged)."""
    return min((c.min_judged_dice for c in cases), default=1.0)


def keeps_labels(cases: list, min_dice: float = MIN_DICE) -> bool:
    """True when the speed-up ran in every case and kept every judged structure at
    ``min_dice``."""
    return bool(cases) and all(c.ran and c.min_judged_dice >= min_dice for c in cases)


def time_ratio(cases: list) -> float:
    """The speed-up's summed network time over the reference's (bf16's self-check included,
    as in a real run)."""
    reference = sum(c.reference_network_s for c in cases)
    return sum(c.network_s for c in cases) / reference if reference > 0 else float("inf")


def pays(cases: list, min_dice: float = MIN_DICE, max_time_ratio: float = MAX_TIME_RATIO) -> bool:
    """It keeps the labels and takes at most ``max_time_ratio`` of the reference's time."""
    return keeps_labels(cases, min_dice) and time_ratio(cases) <= max_time_ratio


def evidence(cases: list, min_dice: float, min_volume_ml: float, max_time_ratio: float,
             quick: bool, date: str) -> dict:
    """What model.json keeps of a check, under provenance.speedup_check."""
    return {"cases": len(cases),
            "min_dice": round(lowest_dice(cases), 4),
            "time_ratio": round(time_ratio(cases), 3), "required_dice": min_dice,
            "min_volume_ml": min_volume_ml, "max_time_ratio": max_time_ratio, "quick": quick,
            "date": date}
