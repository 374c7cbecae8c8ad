"""The batch report: one CSV row per case (and per skipped DICOM object), one file per part.

Columns: ``case, series, status, seconds, device, message``, then one column per structure:
``<name>_ml`` (volume in millilitres; ``<name>_mm2``, an area, for 2D results), then the
review scores: ``case_score`` (the least sure structure the model found), ``absent`` (structures
it did not find) and ``<name>_score`` per structure; with several passes (folds x mirrorings)
also ``case_disagreement`` and ``<name>_disagreement`` (how much the passes disagree, 0-1).
``series`` is empty unless the run was
asked to ``--keep-paths``: then the Series Instance UID for DICOM input and the input path
otherwise (hospital exports often name folders by patient, so by default a report holds no
path, folder name or UID, and messages name the case instead of its path). ``status`` is one of
``done``, ``exists`` (outputs were already there), ``failed``, ``refused`` (a DICOM series that
is not one regular volume), ``skipped`` (a DICOM object that is not a CT/MR volume of the
model's modality), ``cancelled``, ``not done`` (the batch stopped before this case: a full or
read-only disk, the output folder removed; the message says why).

Every part of a sharded batch writes ``batch_report_part-K-of-N.csv`` into the output folder
(an unsplit batch writes ``batch_report.csv`` when asked: ``--report``) and rewrites it after
each case, atomically, so a part that dies leaves a report of what it finished. Skipped DICOM objects are listed by part 0 only, so merging the
parts (:func:`merge_reports`, ``lkm-segment report merge``) lists each once.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from pathlib import Path

from ..errors import InputError
from ..files import atomic_path

log = logging.getLogger(__name__)

BASE_COLUMNS = ["case", "series", "status", "seconds", "device", "message"]
STATUSES = ("done", "exists", "failed", "refused", "skipped", "cancelled", "not done")
REPORT_STEM = "batch_report"


def report_path(out_dir, shard_label: str = "") -> Path:
    return Path(out_dir).absolute() / (f"{REPORT_STEM}_{shard_label}.csv" if shard_label
                                       else f"{REPORT_STEM}.csv")


def private_row(case: str, path, message: str, keep_paths: bool) -> tuple:
    """(series column, message) for a case: with ``keep_paths`` the Series Instance UID (DICOM)
    or the input path, else nothing, and the input's path in the message replaced by the case."""
    if keep_paths:
        return getattr(path, "series_uid", None) or str(getattr(path, "folder", path)), message
    message = str(message)
    where = Path(getattr(path, "folder", path))
    for text in sorted({str(where.absolute()), str(where)}, key=len, reverse=True):
        message = message.replace(text, f"<{case}>")
    return "", message


def volumes_from_summary(summary: dict | None) -> dict:
    """{"liver_ml": 1523.4, ...} from a case's JSON summary."""
    out = {}
    for lab in (summary or {}).get("labels", []):
        if "volume_ml" in lab:
            out[f"{lab['name']}_ml"] = lab["volume_ml"]
        elif "area_mm2" in lab:
            out[f"{lab['name']}_mm2"] = lab["area_mm2"]
    return out


def scores_from_summary(summary: dict | None) -> dict:
    """{"case_score": "0.4123", "absent": "gallbladder", "liver_score": "0.8312", ...} from a
    case's JSON summary (empty without confidence scores; a structure not found has no score)."""
    section = (summary or {}).get("confidence") or {}
    if not section.get("structures"):
        return {}

    def text(value):
        return "" if value is None else f"{float(value):.4f}"

    out = {"case_score": text(section.get("case_score")),
           "absent": " ".join(section.get("absent") or [])}
    out.update({f"{name}_score": text(s.get("score"))
                for name, s in section["structures"].items()})
    if "case_disagreement" in section:  # several passes (folds x mirrorings) only
        out["case_disagreement"] = text(section.get("case_disagreement"))
        out.update({f"{name}_disagreement": text(s.get("disagreement"))
                    for name, s in section["structures"].items()})
    return out


def columns_from_summary(summary: dict | None) -> dict:
    """A case's columns after the base ones: volumes, then review scores."""
    return {**volumes_from_summary(summary), **scores_from_summary(summary)}


class BatchReport:
    """Rows in memory, the CSV rewritten (atomically) after every added row; ``path`` None: kept
    in memory only (no report asked for)."""

    def __init__(self, path, keep_paths: bool = False):
        self.path = Path(path) if path is not None else None
        self.keep_paths = keep_paths  # series UIDs and input paths in the rows (--keep-paths)
        self.rows = []

    def add(self, case: str, series: str, status: str, *, seconds: float | None = None,
            device: str = "", message: str = "", volumes: dict | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown report status {status!r}")
        row = {"case": case, "series": series, "status": status,
               "seconds": "" if seconds is None else f"{seconds:.2f}", "device": device,
               "message": " ".join(str(message).split())}   # one line per row
        row.update({k: v for k, v in (volumes or {}).items()})
        self.rows.append(row)
        self.write()

    def write(self) -> Path | None:
        if self.path is None:
            return None
        with atomic_path(self.path, ".csv") as tmp:
            tmp.write_text(_to_csv(self.rows), encoding="utf-8")
        return self.path


def _columns(rows) -> list:
    extra = []
    for row in rows:
        extra.extend(k for k in row if k not in BASE_COLUMNS and k not in extra)
    return BASE_COLUMNS + extra


def _to_csv(rows, columns=None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or _columns(rows), restval="",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_report(path) -> list:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(BASE_COLUMNS) <= set(reader.fieldnames):
                raise InputError(f"{path} is not a batch report (it lacks the columns "
                                 f"{', '.join(BASE_COLUMNS)}).")
            return list(reader)
    except OSError as exc:
        raise InputError(f"Could not read the report {path}: {exc.strerror or exc}.") from exc


def find_reports(items) -> list:
    """Report files from arguments: files as given, folders searched (recursively) for
    ``batch_report*.csv``."""
    found = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            parts = sorted(path.rglob(f"{REPORT_STEM}*.csv"))
            if not parts:
                raise InputError(f"No {REPORT_STEM}*.csv under {path}.")
            found.extend(parts)
        else:
            found.append(path)
    return found


def merge_reports(paths, out) -> Counter:
    """One CSV with every part's rows (sorted by case, structure columns united); returns the
    count of rows per status. A case reported by several parts is kept from each and warned
    about (the parts overlapped, e.g. runs with different part counts)."""
    out = Path(out).absolute()
    rows = []
    for path in paths:
        if Path(path).absolute() == out:
            continue
        rows.extend(read_report(path))
    seen = Counter((r["case"], r["series"]) for r in rows if r["status"] != "skipped")
    twice = sorted(c for (c, _), n in seen.items() if n > 1)
    if twice:
        log.warning("case(s) reported by more than one part: %s", ", ".join(twice))
    columns = _columns(rows)  # structures in the order the parts list them
    rows.sort(key=lambda r: (r["status"] == "skipped", r["case"], r["series"]))
    with atomic_path(out, ".csv") as tmp:
        tmp.write_text(_to_csv(rows, columns), encoding="utf-8")
    return Counter(r["status"] for r in rows)
