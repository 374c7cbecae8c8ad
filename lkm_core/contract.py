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


# -- outputs --------------------------------------------------------------------------------------
OUTPUT_FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd",
                  "dicom-seg": ".seg.dcm"}
# what the Slicer module asks for and imports (a DICOM SEG is the command line's, for PACS)
MODULE_FORMATS = ("seg.nrrd", "nii.gz", "nrrd")
DICOM_SEG_FORMAT = "dicom-seg"
DEFAULT_FORMAT = "seg.nrrd"
SUMMARY_SUFFIX = ".json"

# -- confidence (review triage) -------------------------------------------------------------------
# The summary's "confidence" section: {"case_score": float | None, "structures": {name: {...,
# "score": 0-1, "flagged": bool}}, "map": file name of the confidence map or None}.
# Each segment of a .seg.nrrd carries its score and flag as segment tags (kept when Slicer saves).
CONFIDENCE_TAG = "LKMSegment.Confidence"     # "0.8312": the structure's score, 0-1
FLAGGED_TAG = "LKMSegment.Flagged"           # "1" when the score is below FLAG_BELOW, else "0"
FLAG_BELOW = 0.6
CONFIDENCE_MAP_SUFFIX = ".confidence.nrrd"   # --uncertainty: uint8 0-100 on the input's grid
PROBABILITIES_SUFFIX = ".npz"   # --save-probabilities: nnU-Net's "probabilities" (c, z, y, x)
# How pictures and Slicer's overlay show the map: (upper bound in %, RGB 0-1, legend text);
# voxels at 95 % and above stay clear
CONFIDENCE_BANDS = [(50, (0.85, 0.1, 0.1), "confidence < 50 %"),
                    (80, (1.0, 0.55, 0.0), "confidence 50-80 %"),
                    (95, (1.0, 0.9, 0.2), "confidence 80-95 %")]

# -- case names -----------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


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


# -- terminology ----------------------------------------------------------------------------------
SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
_CODED_FIELDS = ("category", "type", "modifier", "region", "region_modifier")
_FORBIDDEN = re.compile(r"[~^|\n\r]")
_SNOMED_ID = re.compile(r"[0-9]{6,18}")


class TerminologyError(ValueError):
    """A label's terminology is in no accepted form (the message says which label and why)."""


def _code(value, what: str, default_meaning: str = "") -> dict:
    """One coded entry {'scheme','code','meaning'} from a dict or 'scheme^code^meaning'."""
    if isinstance(value, dict):
        scheme = value.get("scheme", value.get("CodingSchemeDesignator", "SCT"))
        code = value.get("code", value.get("CodeValue", ""))
        meaning = value.get("meaning", value.get("CodeMeaning", default_meaning))
    elif isinstance(value, str) and value.count("^") == 2:
        scheme, code, meaning = value.split("^")
        meaning = meaning or default_meaning
    elif isinstance(value, str) and _SNOMED_ID.fullmatch(value.strip()):
        scheme, code, meaning = "SCT", value.strip(), default_meaning
    else:
        raise TerminologyError(f"its {what} {value!r} is neither {{scheme, code, meaning}} nor "
                               "'scheme^code^meaning'")
    entry = {"scheme": str(scheme).strip(), "code": str(code).strip(),
             "meaning": str(meaning).strip()}
    if not entry["scheme"] or not entry["code"]:
        raise TerminologyError(f"its {what} {value!r} lacks a coding scheme or a code value")
    if not entry["meaning"]:
        raise TerminologyError(f"its {what} {value!r} has no meaning (the code's display text)")
    for key, text in entry.items():
        if _FORBIDDEN.search(text):
            raise TerminologyError(f"its {what} {key} {text!r} contains one of ~ ^ | or a line "
                                   "break, which a Slicer terminology string cannot hold")
    return entry


def _optional_code(text: str, what: str):
    """A '^'-triple of a Slicer string; '^^' (empty) gives None."""
    if text.count("^") != 2:
        raise TerminologyError(f"its {what} {text!r} is not 'scheme^code^meaning'")
    return None if not text.replace("^", "").strip() else _code(text, what)


def _from_slicer_string(text: str) -> dict:
    fields = text.split("~")
    if len(fields) != 7:
        raise TerminologyError(f"the Slicer terminology string {text!r} has {len(fields)} "
                               "'~'-separated fields, not 7 (context~category~type~modifier~"
                               "region context~region~region modifier)")
    context, category, type_, modifier, region_context, region, region_modifier = fields
    entry = {"category": _code(category, "category"), "type": _code(type_, "type")}
    for key, value in (("modifier", modifier), ("region", region),
                       ("region_modifier", region_modifier)):
        code = _optional_code(value, key)
        if code:
            entry[key] = code
    if context.strip() and context.strip() != SLICER_CONTEXT:
        entry["context"] = context.strip()
    if region_context.strip() and region_context.strip() != ANATOMIC_CONTEXT:
        entry["region_context"] = region_context.strip()
    return entry


def normalize_terminology(term, name: str) -> dict:
    """Any accepted form (module docstring) -> the canonical dict. Raises TerminologyError."""
    if isinstance(term, str):
        text = term.strip()
        if "~" in text:
            return _from_slicer_string(text)
        if text.count("^") == 2:
            return {"category": dict(ANATOMICAL_STRUCTURE), "type": _code(text, "type")}
        if _SNOMED_ID.fullmatch(text):
            return {"category": dict(ANATOMICAL_STRUCTURE),
                    "type": {"scheme": "SCT", "code": text, "meaning": str(name)}}
        raise TerminologyError(f"{term!r} is neither a SNOMED CT code (digits), 'SCT^code^meaning' "
                               "nor a Slicer terminology string")
    if isinstance(term, dict):
        if "type" not in term:  # a single code: the structure's type
            if any(k in term for k in ("code", "CodeValue")):
                return {"category": dict(ANATOMICAL_STRUCTURE), "type": _code(term, "type", name)}
            raise TerminologyError(f"{term!r} has no 'type' (and is not a single code)")
        unknown = sorted(set(term) - set(_CODED_FIELDS) - {"context", "region_context"})
        if unknown:
            raise TerminologyError(f"it has unknown key(s) {', '.join(unknown)}")
        entry = {"category": _code(term.get("category") or ANATOMICAL_STRUCTURE, "category"),
                 "type": _code(term["type"], "type", name)}
        for key in ("modifier", "region", "region_modifier"):
            if term.get(key):
                entry[key] = _code(term[key], key)
        for key in ("context", "region_context"):
            if term.get(key):
                if not isinstance(term[key], str) or _FORBIDDEN.search(term[key]):
                    raise TerminologyError(f"its {key} {term[key]!r} is not a plain text")
                entry[key] = term[key].strip()
        return entry
    raise TerminologyError(f"{term!r} is a {type(term).__name__}, not a terminology")


def slicer_terminology_string(terminology: dict) -> str:
    """The ``TerminologyEntry`` text Slicer stores per segment (7 '~'-separated fields, in the
    order Slicer's vtkSlicerTerminologiesModuleLogic serialises them)."""

    def triple(code):
        return "^".join([code["scheme"], code["code"], code["meaning"]]) if code else "^^"

    t = terminology
    return "~".join([t.get("context", SLICER_CONTEXT), triple(t.get("category")),
                     triple(t.get("type")), triple(t.get("modifier")),
                     t.get("region_context", ANATOMIC_CONTEXT), triple(t.get("region")),
                     triple(t.get("region_modifier"))])


# -- labels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRecord:
    value: int
    name: str
    color: tuple            # RGB floats 0-1
    terminology: dict       # canonical (see the module docstring)

    @property
    def slicer_terminology(self) -> str:
        return slicer_terminology_string(self.terminology)


def label_records(meta: dict, where="model.json") -> list:
    """The labels of model.json (background excluded), sorted by value, validated.

    A label without colour or terminology gets them from the structure table
    (:mod:`lkm_core.terminology`) by its name. Raises BundleContractError naming the label.
    """
    from .terminology import label_entry  # stdlib-only table; imported here to avoid a cycle

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
    return sorted(records, key=lambda r: r.value)
