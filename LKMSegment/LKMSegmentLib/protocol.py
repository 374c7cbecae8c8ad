"""The engine's progress protocol (``--progress json``), parsed without Qt or Slicer.

The engine writes one JSON object per stdout line. Bytes arrive in arbitrary chunks (a pipe or a
QProcess read), so :class:`ProtocolParser` buffers partial lines. A line that is not a JSON object
(a stray print from some library) is never fatal: it becomes a ``log`` event so the user sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .enginecontract import contract

# events, phases and their weights are the engine's (lkm_core.contract): one table for both
PHASES = contract.PHASES
KNOWN_EVENTS = contract.EVENTS
PHASE_WEIGHTS = contract.PHASE_WEIGHTS

PHASE_TEXT = {
    "read": "Reading image",
    "preprocess": "Preprocessing",
    "network": "Running the network",
    "postprocess": "Postprocessing",
    "write": "Writing result",
}


@dataclass
class EngineEvent:
    """One line of the protocol. ``kind`` is the ``event`` field (or ``log`` for stray text)."""

    kind: str
    data: dict = field(default_factory=dict)

    @property
    def case(self) -> str | None:
        return self.data.get("case")

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))


def parse_line(line: str) -> EngineEvent | None:
    """Turn one stdout line into an event; blank lines give None."""
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return EngineEvent("log", {"level": "info", "message": text, "raw": True})
    if not isinstance(obj, dict) or obj.get("event") not in KNOWN_EVENTS:
        return EngineEvent("log", {"level": "info", "message": text, "raw": True})
    return EngineEvent(obj["event"], obj)


class ProtocolParser:
    """Feed it chunks of bytes or text; it returns the complete events seen so far."""

    def __init__(self):
        self._pending = ""

    def feed(self, chunk: bytes | str) -> list[EngineEvent]:
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", errors="replace")
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        return [e for e in (parse_line(x) for x in lines) if e is not None]

    def flush(self) -> list[EngineEvent]:
        """Whatever is left when the stream closes (a last line without newline)."""
        rest, self._pending = self._pending, ""
        event = parse_line(rest)
        return [event] if event else []


class ProgressTracker:
    """Turns progress events of several cases into one overall fraction and a phase text."""

    def __init__(self, cases: list[str]):
        self.cases = list(cases)
        self._fraction = {c: 0.0 for c in self.cases}
        self.text = "Starting"

    def update(self, event: EngineEvent) -> float:
        case = event.case
        if event.kind == "progress" and case in self._fraction:
            phase = event.data.get("phase", "network")
            frac = min(max(float(event.data.get("fraction", 0.0)), 0.0), 1.0)
            value = contract.case_fraction(phase, frac)
            self._fraction[case] = max(self._fraction[case], value)
            position = self.cases.index(case) + 1
            prefix = f"{case} ({position}/{len(self.cases)}): " if len(self.cases) > 1 else ""
            self.text = f"{prefix}{PHASE_TEXT.get(phase, phase)} {int(frac * 100)}%"
        elif event.kind in ("done", "error") and case in self._fraction:
            self._fraction[case] = 1.0
        return self.overall

    @property
    def overall(self) -> float:
        if not self.cases:
            return 0.0
        return sum(self._fraction.values()) / len(self.cases)
