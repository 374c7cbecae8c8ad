"""What the Slicer module and the engine agree on, written down once.

The module (``LKMSegment/LKMSegmentLib``) imports this file inside the Slicer process, so it
uses the standard library only: no numpy, torch or SimpleITK. It holds facts and small pure
functions; running the engine stays a child process with its command line.

- exit codes of ``lkm-segment`` and the progress protocol (events, phases and their weights);
- output formats and how a case is named (from a file name, and safe unique names for files);
- reading ``model.json`` (a folder or a .zip) into plain label records: value, name, colour
  (RGB 0-1) and terminology in one canonical form, whatever form the bundle used.

Terminology forms accepted in a label's ``terminology`` (all become the canonical dict):

- ``{"category": CODE, "type": CODE, "modifier": CODE}`` (category and modifier optional),
  CODE being ``{"scheme", "code", "meaning"}`` (DICOM's ``CodingSchemeDesignator``,
  ``CodeValue``, ``CodeMeaning`` accepted too) or a ``"scheme^code^meaning"`` string;
- a single CODE (dict or ``"SCT^10200004^Liver"``): the structure's type;
- a bare SNOMED CT code (``"10200004"``): a type in scheme SCT, the label name as meaning;
- a full Slicer terminology string (``context~category~type~modifier~region context~region~
  region modifier``, as in ``.seg.nrrd`` headers).

Canonical: ``{"category": C, "type": C[, "modifier": C][, "region": C][, "region_modifier": C]
[, "context": str][, "region_context": str]}`` with C = ``{"scheme", "code", "meaning"}``.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePath

from .terminology import (NEUTRAL_COLOR, TerminologyError, label_entry, normalize_terminology,
                          slicer_terminology_string)

# -- stopping a run -------------------------------------------------------------------------------
# With --cancel-file PATH the engine writes its process id to PATH + ENGINE_PID_SUFFIX while it
# runs: whoever stops it can end the engine itself when a launcher stands between (PythonSlicer
# forwards no signal), without psutil and on every OS (os.kill).
ENGINE_PID_SUFFIX = ".pid"


def engine_pid_file(cancel_file) -> Path:
    return Path(f"{cancel_file}{ENGINE_PID_SUFFIX}")


# -- exit codes -----------------------------------------------------------------------------------
EXIT_OK = 0          # every case succeeded (or was already done)
EXIT_FAILED = 1      # a case failed, the run was stopped, or the model could not be loaded
EXIT_USAGE = 2       # bad options (unknown --subset name, bad --step, ...)
EXIT_NOTHING = 3     # nothing to segment: every input was skipped (each skip is said on stderr)

# -- progress protocol (``--progress json``) -------------------------------------------------------
EVENTS = ("progress", "log", "done", "error")
PHASES = ("read", "preprocess", "network", "postprocess", "write")
# Share of one case's progress given to each phase: the network dominates every real run.
PHASE_WEIGHTS = {"read": 0.05, "preprocess": 0.10, "network": 0.75, "postprocess": 0.05,
                 "write": 0.05}
# ``kind`` of an error event (lkm_core.errors classes, plus the CLI's own)
ERROR_KINDS = ("bad_input", "bad_model", "resources", "cancelled", "usage", "internal", "error")


def case_fraction(phase: str, fraction: float) -> float:
    """How far one case is (0-1) when ``phase`` is ``fraction`` done."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    done = 0.0
    for name in PHASES:
        if name == phase:
            return done + PHASE_WEIGHTS[name] * fraction
        done += PHASE_WEIGHTS[name]
    return done  # unknown phase: count the known ones as done


# -- devices --------------------------------------------------------------------------------------
# what the module offers (the engine also takes cuda:N)
DEVICES = ("auto", "cuda", "cpu")
DEVICE_HELP = "auto (default: an NVIDIA GPU when PyTorch sees one, else the CPU), cuda, cuda:N or cpu"

# -- outputs --------------------------------------------------------------------------------------
OUTPUT_FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd",
                  "dicom-seg": ".seg.dcm"}
# what the Slicer module asks for and imports (a DICOM SEG is the command line's, for PACS)
MODULE_FORMATS = ("seg.nrrd", "nii.gz", "nrrd")
DICOM_SEG_FORMAT = "dicom-seg"
DEFAULT_FORMAT = "seg.nrrd"
SUMMARY_SUFFIX = ".json"

# -- the output folder: checked before the first case (engine) and before the engine starts
# (module), so an unwritable or full disk is found before any network runs
PROBE_PREFIX = ".lkm-write-probe-"
# Output bytes per input byte, an overestimate: compressed label images are far smaller than
# the images they segment; a DICOM SEG stores one bit-plane per structure, often uncompressed
OUTPUT_BYTES_PER_INPUT_BYTE = {"seg.nrrd": 1.0, "nii.gz": 1.0, "nrrd": 1.0, "dicom-seg": 2.0}
CONFIDENCE_MAP_BYTES_PER_INPUT_BYTE = 1.0
SUMMARY_BYTES = 64 * 1024


class OutputFolderError(Exception):
    """The output folder cannot be created or written; the message is one line for the user."""


def check_output_folder(folder) -> None:
    """Create ``folder`` if needed and write and remove a probe file in it, or raise
    :class:`OutputFolderError` naming the folder, the cause and what to do."""
    import os
    import tempfile
    folder = Path(folder).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
        try:
            os.write(fd, b"lkm")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        raise OutputFolderError(f"Cannot write to the output folder {folder}: {cause}. Choose a "
                                "folder you can write to (and that has room for the results)."
                                ) from exc


def estimated_output_bytes(input_bytes: int, fmt: str = DEFAULT_FORMAT,
                           confidence_map: bool = False) -> int:
    """A conservative (high) estimate of one case's output size from its input's size."""
    factor = OUTPUT_BYTES_PER_INPUT_BYTE.get(fmt, 2.0)
    if confidence_map:
        factor += CONFIDENCE_MAP_BYTES_PER_INPUT_BYTE
    return int(input_bytes * factor) + SUMMARY_BYTES


def free_bytes(folder) -> int:
    import shutil
    return shutil.disk_usage(folder).free


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            break
        n /= 1000.0
    return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"


def free_space_warning(folder, needed_bytes: int) -> str | None:
    """One line when ``folder``'s disk has less room than ``needed_bytes``, else None."""
    free = free_bytes(folder)
    if free >= needed_bytes:
        return None
    return (f"The output folder {Path(folder).absolute()} has {format_bytes(free)} free; the "
            f"results may need up to {format_bytes(needed_bytes)} (an overestimate). The batch "
            "stops cleanly if the disk fills up.")


# -- confidence (review triage) -------------------------------------------------------------------
# The summary's "confidence" section: {"case_score": float | None (least sure structure found),
# "absent": [names not found], "structures": {name: {..., "found": bool, "score": 0-1, or None
# when not found, "flagged": bool, "disagreement": 0-1 with several passes only}},
# "case_disagreement": 0-1 with several passes only, "map": file name of the map or None}.
# Each segment of a .seg.nrrd carries its score and flag as segment tags (kept when Slicer saves).
CONFIDENCE_TAG = "LKMSegment.Confidence"     # "0.8312": the structure's score, 0-1
FLAGGED_TAG = "LKMSegment.Flagged"           # "1" when the score is below FLAG_BELOW, else "0"
FLAG_BELOW = 0.6
# With more than one pass (several folds, --tta), a structure is flagged too when its passes
# disagree: its "disagreement" (0-1, the mean inside the structure of 1 minus the summed
# geometric mean of the passes' probabilities; two passes: the squared Hellinger distance) is
# above this, whatever its score. 0.1 is about a tenth of the structure's voxels where two
# passes pick different classes with 90 % each; chosen from the measure's scale, not calibrated
# on held-out data. "case_disagreement" is the largest of the case's structures.
DISAGREEMENT_FLAG_ABOVE = 0.1
CONFIDENCE_MAP_SUFFIX = ".confidence.nrrd"   # --confidence-map: uint8 0-100 on the input's grid
PROBABILITIES_SUFFIX = ".npz"   # --save-probabilities: nnU-Net's "probabilities" (c, z, y, x)
# How pictures and Slicer's overlay show the map: (upper bound in %, RGB 0-1, legend text);
# voxels at 95 % and above stay clear
CONFIDENCE_BANDS = [(50, (0.85, 0.1, 0.1), "confidence < 50 %"),
                    (80, (1.0, 0.55, 0.0), "confidence 50-80 %"),
                    (95, (1.0, 0.9, 0.2), "confidence 80-95 %")]


def least_confident_first(score, name: str, mean_score=None) -> tuple:
    """The sort key of review order, for structures and cases alike (the CLI's review and the
    Slicer panel): lowest score first, no score last; ties by the mean score, then by name."""
    return (score is None, score if score is not None else 0.0,
            mean_score if mean_score is not None else 0.0, str(name).casefold())

# -- case names -----------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def is_image_file(path) -> bool:
    return PurePath(path).name.lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(filename: str) -> str:
    """``ct.nii.gz`` -> ``ct``: the engine's case name for an image file."""
    name = PurePath(filename).name
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return PurePath(name).stem


def safe_case_name(name: str, taken=()) -> str:
    """A file-system safe, unique case name ('CT 1.5mm' -> 'CT_1_5mm').

    Unique ignoring case: 'CT' and 'ct' would be one file on Windows and macOS.
    """
    base = _UNSAFE.sub("_", name or "").strip("_") or "case"
    taken_folded = {str(t).casefold() for t in taken}
    candidate, n = base, 2
    while candidate.casefold() in taken_folded:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


# -- model.json -----------------------------------------------------------------------------------
META_FILE = "model.json"


class BundleContractError(ValueError):
    """model.json cannot be used; the message names the file and says what to do."""


def read_model_json(path) -> dict:
    """model.json of a bundle folder or .zip, as a dict (no extraction, no weights read)."""
    path = Path(path)
    try:
        if path.is_dir():
            text = (path / META_FILE).read_text(encoding="utf-8")
        elif path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.split("/")[-1] == META_FILE]
                if not names:
                    raise BundleContractError(f"{path} has no {META_FILE} inside; it is not a "
                                              "model bundle.")
                text = zf.read(min(names, key=len)).decode("utf-8")
        elif path.name == META_FILE and path.is_file():
            text = path.read_text(encoding="utf-8")
        elif not path.exists():
            raise BundleContractError(f"The model bundle {path} does not exist.")
        else:
            raise BundleContractError(f"{path} is neither a model folder nor a .zip bundle.")
    except FileNotFoundError:
        raise BundleContractError(f"{path} has no {META_FILE}; choose the folder that contains "
                                  "it.") from None
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise BundleContractError(f"{path}: {META_FILE} cannot be read ({exc}).") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise BundleContractError(f"{path}: {META_FILE} is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise BundleContractError(f"{path}: {META_FILE} is not a JSON object.")
    return meta


# -- colours --------------------------------------------------------------------------------------
def color_to_rgb01(color) -> tuple:
    """'#rrggbb', [r, g, b] in 0-255 or in 0-1 -> (r, g, b) floats in 0-1."""
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if not re.fullmatch(r"[0-9A-Fa-f]{6}", text):
            raise ValueError(f"colour {color!r} is not #rrggbb")
        return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    try:
        values = [float(c) for c in color]
    except (TypeError, ValueError):
        raise ValueError(f"colour {color!r} is neither #rrggbb nor three numbers") from None
    if len(values) != 3 or any(v < 0 for v in values):
        raise ValueError(f"colour {color!r} needs three non-negative components")
    if any(v > 1.0 for v in values):
        if any(v > 255 for v in values):
            raise ValueError(f"colour {color!r} has a component above 255")
        values = [v / 255.0 for v in values]
    return tuple(values)


# Two structures whose colours lie closer than this (Euclidean, RGB 0-1) look alike in a view:
# about 30/255 along one channel.
MIN_COLOR_DISTANCE = 0.12


def color_distance(a, b) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def distinct_color(color, taken) -> tuple:
    """``color`` if it differs from every colour in ``taken``, else the nearest variant that does:
    hue turned in steps of the golden angle, lightness nudged (deterministic, so the module and
    the engine derive the same colour)."""
    import colorsys

    taken = list(taken)
    if all(color_distance(color, t) >= MIN_COLOR_DISTANCE for t in taken):
        return tuple(color)
    h, lightness, s = colorsys.rgb_to_hls(*color)
    s = max(s, 0.45)   # a grey has no hue to turn: give it some saturation
    for step in range(1, 200):
        hue = (h + step * 0.381966) % 1.0
        light = min(0.8, max(0.25, lightness + (0.12, 0.0, -0.12)[step % 3]))
        candidate = tuple(round(c, 4) for c in colorsys.hls_to_rgb(hue, light, s))
        if all(color_distance(candidate, t) >= MIN_COLOR_DISTANCE for t in taken):
            return candidate
    return tuple(color)  # hundreds of structures: no distinct colour left, keep the bundle's


# -- labels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRecord:
    """One label of a bundle, as the engine and the module both use it."""
    value: int
    name: str
    color: tuple = NEUTRAL_COLOR   # RGB floats 0-1
    terminology: dict | None = None  # canonical (lkm_core.terminology.normalize_terminology)

    @property
    def slicer_terminology(self) -> str | None:
        """The segment's TerminologyEntry text (what the engine writes into .seg.nrrd)."""
        return slicer_terminology_string(self.terminology) if self.terminology else None


def label_records(meta: dict, where="model.json") -> list:
    """The labels of model.json (background excluded), sorted by value, validated.

    A label without colour or terminology gets them from the structure table
    (:mod:`lkm_core.terminology`) by its name. A colour that looks like an earlier label's
    (lower value) is replaced by a distinct one (:func:`distinct_color`): left and right
    kidney, or two unknown structures, never share a colour. Raises BundleContractError naming
    the label.
    """
    entries = meta.get("labels")
    if not isinstance(entries, list) or not entries:
        raise BundleContractError(f"{where} lists no labels.")
    records, seen_values, seen_names = [], set(), set()
    for entry in entries:
        if not isinstance(entry, dict) or "value" not in entry or "name" not in entry:
            raise BundleContractError(f"{where}: a label lacks a value or a name: {entry!r}")
        value, name = entry["value"], entry["name"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BundleContractError(f"{where}: label {name!r} has the value {value!r}; label "
                                      "values are non-negative integers.")
        if value == 0:
            continue  # background is never a segment
        if not isinstance(name, str) or not name.strip():
            raise BundleContractError(f"{where}: label {value} has no usable name ({name!r}).")
        if value in seen_values or name.casefold() in seen_names:
            raise BundleContractError(f"{where}: label {name!r} ({value}) repeats a value or a "
                                      "name; every label needs its own.")
        seen_values.add(value)
        seen_names.add(name.casefold())
        fallback = label_entry(value, name)
        try:
            color = color_to_rgb01(entry["color"] if entry.get("color") is not None
                                   else fallback["color"])
        except ValueError as exc:
            raise BundleContractError(f"{where}: label {name!r}: {exc}.") from None
        try:
            terminology = normalize_terminology(
                entry["terminology"] if entry.get("terminology") else fallback["terminology"], name)
        except TerminologyError as exc:
            raise BundleContractError(
                f"{where}: the terminology of label {name!r} is not usable: {exc}. Give "
                "{category, type, modifier} codes, 'SCT^code^meaning', a SNOMED CT code or a "
                "Slicer terminology string.") from None
        records.append(LabelRecord(value, name, tuple(color), terminology))
    if not records:
        raise BundleContractError(f"{where} lists no labels besides the background.")
    records.sort(key=lambda r: r.value)
    taken = []
    for i, record in enumerate(records):
        color = distinct_color(record.color, taken)
        taken.append(color)
        if color != record.color:
            records[i] = LabelRecord(record.value, record.name, color, record.terminology)
    return records
