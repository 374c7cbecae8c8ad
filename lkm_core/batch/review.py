"""``lkm-segment review OUTDIR``: which cases, and which structures in them, to correct first.

Reads the per-case summaries a finished ``predict`` batch wrote (``CASE.json``, with the
``confidence`` section), ranks the cases least confident first (a case is as sure as its least
sure structure) and, within each case, its structures; prints a table, writes a CSV with one
row per (case, structure) and one PNG overview of the worst cases (slices through the least
sure structure, labels and, where ``--confidence-map`` wrote one, the confidence map).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..contract import distinct_color
from ..contract import least_confident_first
from ..errors import InputError
from ..files import atomic_path

log = logging.getLogger(__name__)

CASE_COLUMNS = ["case_rank", "case", "case_score", "case_mean_score", "case_disagreement"]
# per structure, as the summary names them; "disagreement" (and "case_disagreement") are empty
# unless the run had several passes (folds x mirrorings)
STRUCTURE_COLUMNS = ["structure", "score", "flagged", "found", "disagreement", "mean_confidence",
                     "boundary_confidence", "uncertain_fraction", "components",
                     "cut_by_field_of_view", "volume_ml", "volume_in_training_range"]
CSV_COLUMNS = CASE_COLUMNS + STRUCTURE_COLUMNS
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd")


@dataclass
class ReviewedCase:
    case: str
    summary_path: Path
    summary: dict
    score: float | None
    structures: list = field(default_factory=list)  # [(name, scores)], least sure first

    @property
    def folder(self) -> Path:
        return self.summary_path.parent

    def labels_path(self) -> Path | None:
        for suffix in LABEL_SUFFIXES:
            path = self.folder / f"{self.case}{suffix}"
            if path.is_file():
                return path
        return None

    def confidence_map_path(self) -> Path | None:
        name = (self.summary.get("confidence") or {}).get("map")
        path = self.folder / name if name else None
        return path if path is not None and path.is_file() else None


def _is_case_summary(data) -> bool:
    return isinstance(data, dict) and "case" in data and "labels" in data and "model" in data


def collect(out_dir) -> tuple[list[ReviewedCase], list[str]]:
    """(cases ranked least confident first, names of summaries without confidence scores)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} is not a folder; give the output folder of a predict run.")
    cases, unscored = [], []
    for path in sorted(out_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not _is_case_summary(data):
            continue
        confidence = data.get("confidence")
        if not confidence or not confidence.get("structures"):
            unscored.append(str(data["case"]))
            continue
        structures = sorted(confidence["structures"].items(), 
                            key=lambda item: least_confident_first(item[1].get("score"), item[0]))
        cases.append(ReviewedCase(str(data["case"]), path, data, confidence.get("case_score"),
                                  structures))
    if not cases and not unscored:
        raise InputError(f"{out_dir} holds no case summaries (CASE.json) of lkm-segment predict.")
    cases.sort(key=lambda c: least_confident_first(c.score, c.case,
                                                   c.summary["confidence"].get("mean_score")))
    return cases, unscored


def table(cases: list[ReviewedCase], structures_shown: int = 3) -> str:
    lines = [f"{'rank':>4}  {'case':<28} {'score':>6} {'mean':>6} {'disagr':>6}  "
             "least sure structures"]
    for rank, c in enumerate(cases, 1):
        worst = ", ".join(f"{name} {s['score']:.2f}{' !' if s.get('flagged') else ''}"
                          for name, s in c.structures[:structures_shown]
                          if s.get("score") is not None)
        missing = [name for name, s in c.structures if s.get("found") is False]
        if missing:
            worst += ("; " if worst else "") + "absent: " + ", ".join(missing)
        score = "-" if c.score is None else f"{c.score:.2f}"
        mean = c.summary["confidence"].get("mean_score")
        mean = "-" if mean is None else f"{mean:.2f}"
        spread = c.summary["confidence"].get("case_disagreement")
        spread = "-" if spread is None else f"{spread:.2f}"
        lines.append(f"{rank:>4}  {c.case:<28} {score:>6} {mean:>6} {spread:>6}  {worst}")
    lines.append("(score 0-1 from the model's own probabilities; disagr 0-1 = how much its "
                 "folds/mirrorings disagree, '-' with one pass; '!' = flagged for review; "
                 "absent = not found, check it is really absent)")
    return "\n".join(lines)


def write_csv(cases: list[ReviewedCase], path) -> Path:

    path = Path(path)
    with atomic_path(path, ".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS)
            writer.writeheader()
            for rank, c in enumerate(cases, 1):
                for name, s in c.structures:
                    writer.writerow({"case_rank": rank, "case": c.case, "case_score": c.score,
                                     "case_mean_score": c.summary["confidence"].get("mean_score"),
                                     "case_disagreement":
                                         c.summary["confidence"].get("case_disagreement"),
                                     "structure": name,
                                     **{k: s.get(k) for k in STRUCTURE_COLUMNS[1:]}})
    return path


def case_picture(c: ReviewedCase):
    """Slices through the case's least sure structure: labels, and the confidence map."""
    import SimpleITK as sitk

    from ..outputs.reading import read_seg_nrrd
    from ..inputs.images import read_image
    from ..outputs.pictures import LegendEntry, Row, confidence_legend, labelled_views_picture
    from ..terminology import NEUTRAL_COLOR, lookup

    source = c.summary.get("input_path")
    labels_path = c.labels_path()
    if not source:
        raise InputError(f"{c.case}: the summary records no input path (left out by default for "
                         "privacy); run predict with --keep-paths for the overview picture.")
    if not Path(source).exists() or labels_path is None:
        raise InputError(f"{c.case}: the input image or the labels are no longer where the run "
                         "wrote them; the overview needs both.")
    image = read_image(source)
    if labels_path.name.endswith(".seg.nrrd"):
        labels, names = read_seg_nrrd(labels_path, image)
    else:
        labels = sitk.Resample(sitk.ReadImage(str(labels_path)), image, sitk.Transform(),
                               sitk.sitkNearestNeighbor)
        names = {lab["value"]: lab["name"] for lab in c.summary["labels"]}
    colors, legend = {}, []
    for value, name in sorted(names.items()):
        structure = lookup(name)
        color = distinct_color(structure.color if structure else NEUTRAL_COLOR, colors.values())
        colors[value] = color
        legend.append(LegendEntry(name, color))
    # slices through the least sure structure the model found (a missing one has no voxels)
    worst_name, worst = next(((n, s) for n, s in c.structures if s.get("found")),
                             c.structures[0])
    focus = [v for v, n in names.items() if n == worst_name]
    worst_score = "absent" if worst.get("score") is None else f"{worst['score']:.2f}"
    case_score = "-" if c.score is None else f"{c.score:.2f}"
    title = f"{c.case}: score {case_score}; least sure {worst_name} {worst_score}"
    rows = [Row(title, labels, colors)]
    map_path = c.confidence_map_path()
    if map_path is not None:
        confidence = sitk.ReadImage(str(map_path))
        rows.append(Row("confidence map (tinted where the model is unsure)", labels, colors,
                        confidence=confidence))
        legend += confidence_legend()
    modality = str(c.summary.get("model", {}).get("modality") or "CT")
    return labelled_views_picture(image, rows, legend, modality=modality, focus_values=focus)


def write_overview(cases: list[ReviewedCase], path, worst: int = 3) -> Path | None:
    from ..outputs.pictures import stack_pictures, write_png

    pictures = []
    for c in cases[:worst]:
        try:
            pictures.append(case_picture(c))
        except InputError as exc:
            log.warning("%s", exc)
    if not pictures:
        return None
    return write_png(stack_pictures(pictures), path)
