"""Which cases, and which structures in them, a reviewer should look at first (no MRML, no Qt).

The scores are the engine's own (the ``confidence`` section of its per-case summary, or the
segment tags it writes into the .seg.nrrd): a structure's ``score`` is 0-1, lower means look
first; a case is as sure as its least sure structure (the engine's ``case_score``); a structure
below the engine's threshold, or whose folds/mirrorings disagree above the engine's other
threshold (``disagreement``, runs with several passes only), is ``flagged``. Nothing is recomputed here: these functions only
read and order, so that the panel, the batch list and the export list agree with the command
line's ``lkm-segment review``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .enginecontract import contract


@dataclass(frozen=True)
class StructureConfidence:
    name: str
    score: float | None      # None: the engine gave no score (an older engine, a user's segment)
    flagged: bool = False
    found: bool = True
    disagreement: float | None = None  # 0-1 between folds/mirrorings; None with one pass

    @property
    def passes_disagree(self) -> bool:
        return self.disagreement is not None and \
            self.disagreement > contract.DISAGREEMENT_FLAG_ABOVE

    def text(self) -> str:
        if not self.found:  # absent is not uncertain: it has no score
            return f"{self.name}: not found, check it is really absent"
        if self.score is None:
            return f"{self.name}: no score"
        why = f" (folds/mirrorings disagree {self.disagreement:.2f})" \
            if self.passes_disagree else ""
        return f"{self.name}: {self.score:.2f}" + ("  ⚑ check first" + why if self.flagged else "")


def parse_score(value) -> float | None:
    """A score from a summary (float) or a segment tag ('0.8312'); None when unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def parse_flag(value, score: float | None, disagreement: float | None = None) -> bool:
    """The engine's flag ('1'/'0', true/false); without one, the contract's thresholds decide."""
    if isinstance(value, bool):
        return value
    if value is not None and str(value).strip() in ("0", "1"):
        return str(value).strip() == "1"
    return ((score is not None and score < contract.FLAG_BELOW)
            or (disagreement is not None and disagreement > contract.DISAGREEMENT_FLAG_ABOVE))


def least_confident_first(structures) -> list[StructureConfidence]:
    return sorted(structures, key=lambda s: contract.least_confident_first(s.score, s.name))


def structures_from_summary(summary: dict) -> list[StructureConfidence]:
    """The structures of one engine summary, least confident first (empty without scores)."""
    section = (summary or {}).get("confidence") or {}
    found = []
    for name, entry in (section.get("structures") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        score = parse_score(entry.get("score"))
        spread = parse_score(entry.get("disagreement"))
        found.append(StructureConfidence(str(name), score,
                                         parse_flag(entry.get("flagged"), score, spread),
                                         bool(entry.get("found", True)), spread))
    return least_confident_first(found)


def case_score(summary: dict, structures=None) -> float | None:
    """The engine's case score; for a summary without one, its least sure structure (the
    engine's own rule)."""
    section = (summary or {}).get("confidence") or {}
    score = parse_score(section.get("case_score"))
    if score is not None:
        return score
    scores = [s.score for s in (structures if structures is not None
                                else structures_from_summary(summary)) if s.score is not None]
    return min(scores) if scores else None


@dataclass(frozen=True)
class RankedCase:
    key: str                 # what the panel uses to find the case again (a volume's node ID)
    label: str               # what it shows (the volume's name)
    score: float | None
    structures: list = field(default_factory=list)  # StructureConfidence, least sure first

    @property
    def flagged(self) -> list[StructureConfidence]:
        return [s for s in self.structures if s.flagged]

    def text(self, rank: int, shown: int = 2) -> str:
        if self.score is None:
            return f"{rank}. {self.label}: no confidence scores"
        worst = ", ".join(f"{s.name} {s.score:.2f}{' ⚑' if s.flagged else ''}"
                          for s in self.structures[:shown] if s.score is not None)
        return f"{rank}. {self.label}: {self.score:.2f}" + (f" (least sure: {worst})" if worst else "")


def rank_cases(entries) -> list[RankedCase]:
    """``entries``: (key, label, engine summary) per case. Least confident first; cases without
    scores last."""
    ranked = []
    for key, label, summary in entries:
        structures = structures_from_summary(summary)
        mean = ((summary or {}).get("confidence") or {}).get("mean_score")
        case = RankedCase(str(key), str(label), case_score(summary, structures), structures)
        ranked.append((contract.least_confident_first(case.score, case.label, mean), case))
    return [case for _, case in sorted(ranked, key=lambda pair: pair[0])]


@dataclass(frozen=True)
class ReviewPair:
    """A volume and a segmentation made for it, with the confidence stored in its segments."""

    volume_id: str
    segmentation_id: str
    label: str
    score: float | None      # the least sure segment's score (None: no segment has one)
    flagged: int = 0         # how many segments are flagged

    def text(self, exported: bool = False) -> str:
        score = "no score" if self.score is None else f"{self.score:.2f}"
        flags = f", {self.flagged} flagged" if self.flagged else ""
        return f"{self.label}: {score}{flags}" + ("  (exported)" if exported else "")


def order_for_export(pairs, exported=frozenset()) -> list[ReviewPair]:
    """Least confident first, those already exported (``exported``: (volume ID, segmentation
    ID) pairs) after all others; pairs without scores after those with scores."""
    return sorted(pairs, key=lambda p: ((p.volume_id, p.segmentation_id) in exported,
                                        *contract.least_confident_first(p.score, p.label)))
