"""Names, colours and SNOMED CT codes of common abdominal structures.

Standard library only: the Slicer module reads it too (directly and through :mod:`lkm_core.contract`).
All of terminology lives here: the structure table, the accepted forms of a label's terminology
and the string Slicer stores per segment.
Used when a bundle is made (``bundle init``, nnU-Net export) to give every label a display name,
a colour and a terminology entry that 3D Slicer understands, and by the outputs to write them
into ``.seg.nrrd`` files.

Conventions
-----------
- Keys are lower-case snake_case names (``kidney_right``); :func:`lookup` also accepts spaces,
  hyphens and capitals ("Kidney Right", "kidney-right").
- Colours are RGB floats in 0–1 (Slicer's segment colour convention).
- Codes are ``{"scheme": "SCT", "code": "...", "meaning": "..."}`` (SNOMED CT). A terminology
  entry is ``{"category": code, "type": code, "modifier": code (optional)}``.
- A name not in the table gets a neutral colour and the generic "Tissue" type, so a model with
  unusual labels still loads; its terminology is marked as such.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass


SCHEME = "SCT"


def code(value: str, meaning: str) -> dict:
    return {"scheme": SCHEME, "code": value, "meaning": meaning}


ANATOMICAL_STRUCTURE = code("123037004", "Anatomical Structure")
TISSUE_CATEGORY = code("85756007", "Tissue")
TISSUE_TYPE = code("85756007", "Tissue")
RIGHT = code("24028007", "Right")
LEFT = code("7771000", "Left")

NEUTRAL_COLOR = (0.5, 0.5, 0.5)


# -- accepted forms of a terminology, and Slicer's string ----------------------------------------------------------------------------------
SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
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


@dataclass(frozen=True)
class Structure:
    name: str           # snake_case key
    display: str        # human-readable name
    color: tuple        # RGB 0-1
    type: dict          # SNOMED CT type code
    modifier: dict | None = None

    def terminology(self) -> dict:
        entry = {"category": dict(ANATOMICAL_STRUCTURE), "type": dict(self.type)}
        if self.modifier:
            entry["modifier"] = dict(self.modifier)
        return entry


def _rgb(r: int, g: int, b: int) -> tuple:
    return (round(r / 255, 4), round(g / 255, 4), round(b / 255, 4))


# Colours follow the customary anatomical palette (liver brown-red, spleen purple, kidneys
# orange, gallbladder green, vessels red/blue, ...), but every structure gets its own: left and
# right differ (contract.MIN_COLOR_DISTANCE apart; a test checks the whole table).
_STRUCTURES = [
    Structure("liver", "Liver", _rgb(221, 130, 101), code("10200004", "Liver")),
    Structure("spleen", "Spleen", _rgb(157, 108, 162), code("78961009", "Spleen")),
    Structure("kidney_right", "Right kidney", _rgb(185, 102, 83), code("64033007", "Kidney"), RIGHT),
    Structure("kidney_left", "Left kidney", _rgb(212, 188, 120), code("64033007", "Kidney"), LEFT),
    Structure("kidney", "Kidney", _rgb(200, 120, 60), code("64033007", "Kidney")),
    Structure("gallbladder", "Gallbladder", _rgb(139, 150, 98), code("28231008", "Gallbladder")),
    Structure("stomach", "Stomach", _rgb(245, 155, 190), code("69695003", "Stomach")),
    Structure("pancreas", "Pancreas", _rgb(249, 180, 111), code("15776009", "Pancreas")),
    Structure("aorta", "Aorta", _rgb(224, 97, 76), code("15825003", "Aorta")),
    Structure("inferior_vena_cava", "Inferior vena cava", _rgb(0, 151, 206),
              code("64131007", "Inferior vena cava")),
    Structure("portal_vein", "Portal vein", _rgb(0, 112, 165), code("32764006", "Portal vein")),
    Structure("esophagus", "Esophagus", _rgb(180, 200, 230), code("32849002", "Esophagus")),
    Structure("duodenum", "Duodenum", _rgb(255, 253, 229), code("38848004", "Duodenum")),
    Structure("small_intestine", "Small intestine", _rgb(205, 167, 142),
              code("30315005", "Small intestine")),
    Structure("colon", "Colon", _rgb(130, 90, 40), code("71854001", "Colon")),
    Structure("urinary_bladder", "Urinary bladder", _rgb(140, 190, 220),
              code("89837001", "Urinary bladder")),
    Structure("adrenal_gland_right", "Right adrenal gland", _rgb(249, 186, 150),
              code("23451007", "Adrenal gland"), RIGHT),
    Structure("adrenal_gland_left", "Left adrenal gland", _rgb(200, 220, 140),
              code("23451007", "Adrenal gland"), LEFT),
    Structure("prostate", "Prostate", _rgb(120, 70, 140), code("41216001", "Prostate")),
    Structure("heart", "Heart", _rgb(160, 30, 40), code("80891009", "Heart")),
]

TABLE: dict[str, Structure] = {s.name: s for s in _STRUCTURES}

# other spellings people (and datasets) use
ALIASES = {
    "right_kidney": "kidney_right", "left_kidney": "kidney_left",
    "gall_bladder": "gallbladder", "ivc": "inferior_vena_cava", "postcava": "inferior_vena_cava",
    "vena_cava_inferior": "inferior_vena_cava", "bladder": "urinary_bladder",
    "oesophagus": "esophagus", "right_adrenal_gland": "adrenal_gland_right",
    "left_adrenal_gland": "adrenal_gland_left", "portal_vein_and_splenic_vein": "portal_vein",
}


def normalize_name(name: str) -> str:
    """'Kidney Right' / 'kidney-right' -> 'kidney_right'."""
    return "_".join(str(name).strip().lower().replace("-", " ").replace("_", " ").split())


def lookup(name: str) -> Structure | None:
    """The table entry for a structure name (any common spelling), or None."""
    key = normalize_name(name)
    key = ALIASES.get(key, key)
    return TABLE.get(key)


def label_entry(value: int, name: str) -> dict:
    """A bundle label dict for ``name``: display colour and terminology from the table, or a
    neutral fallback (grey, generic "Tissue") for unknown names."""
    structure = lookup(name)
    if structure is None:
        return {"value": int(value), "name": str(name), "color": list(NEUTRAL_COLOR),
                "terminology": {"category": dict(TISSUE_CATEGORY), "type": dict(TISSUE_TYPE)}}
    return {"value": int(value), "name": structure.name, "color": list(structure.color),
            "terminology": copy.deepcopy(structure.terminology())}
