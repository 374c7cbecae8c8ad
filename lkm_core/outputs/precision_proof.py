"""Whether bf16 keeps a model's labels: each case segmented in fp32 and in bf16 on the CPU, and
the two label images compared structure by structure (Dice on the input grid).

A model whose structures all keep Dice >= 0.99 may record ``"cpu_precision": "bf16"`` in its
model.json (``inference``); ``--precision auto`` then runs it in bf16 on CPUs with bf16 units.
Structures smaller than ``min_volume_ml`` in fp32 are reported but not judged: on a few voxels
one voxel more or less moves Dice by several hundredths, whatever the precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from ..bundle import Bundle
from ..inference.predictor import Predictor
from .reading import dice

MIN_DICE = 0.99
MIN_VOLUME_ML = 1.0


@dataclass
class StructureAgreement:
    name: str
    fp32_ml: float          # the structure's volume in the fp32 labels
    dice: float             # fp32 vs bf16; 1.0 where neither labels it
    voxels_differing: int
    judged: bool            # large enough for its Dice to say something


@dataclass
class CaseAgreement:
    case: str
    fp32_network_s: float
    bf16_network_s: float
    bf16_ran: str           # what the bf16 run reports it ran in (fp32 after a failed self-check)
    structures: list = field(default_factory=list)

    @property
    def min_judged_dice(self) -> float:
        return min((s.dice for s in self.structures if s.judged), default=1.0)


def compare_structures(fp32: np.ndarray, bf16: np.ndarray, bundle: Bundle, voxel_ml: float,
                       min_volume_ml: float = MIN_VOLUME_ML) -> list:
    """Per structure of ``bundle``: Dice of the two label arrays and how many voxels differ;
    judged where either precision labels at least ``min_volume_ml`` of it."""
    out = []
    for label in bundle.labels:
        a, b = fp32 == label.value, bf16 == label.value
        value = dice(a, b)
        larger_ml = max(int(a.sum()), int(b.sum())) * voxel_ml  # one found by bf16 only counts
        out.append(StructureAgreement(label.name, round(float(a.sum()) * voxel_ml, 3),
                                      1.0 if np.isnan(value) else round(value, 4),
                                      int(np.logical_xor(a, b).sum()),
                                      larger_ml >= min_volume_ml))
    return out


def compare_precisions(bundle: Bundle, cases: Iterable, *, threads: int | None = None,
                       quick: bool = False, min_volume_ml: float = MIN_VOLUME_ML) -> list:
    """``cases``: (name, SimpleITK image) pairs. Segments each in fp32, then in bf16 (the
    predictor's own self-check included), on the CPU with nnU-Net's tiling."""
    results = []
    for name, image in cases:
        runs = {}
        for precision in ("fp32", "bf16"):
            predictor = Predictor(bundle, device="cpu", threads=threads, quick=quick,
                                  confidence=False, tiling="nnunet", precision=precision)
            started = time.perf_counter()
            result = predictor.predict_image(image, case=name)
            runs[precision] = (result, time.perf_counter() - started)
        (exact, _), (low, _) = runs["fp32"], runs["bf16"]
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        structures = compare_structures(sitk.GetArrayViewFromImage(exact.labels),
                                        sitk.GetArrayViewFromImage(low.labels), bundle,
                                        voxel_ml, min_volume_ml)
        results.append(CaseAgreement(name, round(exact.timings["network"], 2),
                                     round(low.timings["network"], 2), low.precision, structures))
    return results


def bf16_holds(cases: list, min_dice: float = MIN_DICE) -> bool:
    """True when every case ran in bf16 and kept every judged structure at ``min_dice``."""
    return bool(cases) and all(c.bf16_ran == "bf16" and c.min_judged_dice >= min_dice
                               for c in cases)
