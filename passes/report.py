"""What a pass did, as it reports it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PassReport:
    """Rewrites a pass made (by kind) and the places it left alone, with the reason."""

    rewrites: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())

    def count(self, kind: str, n: int = 1) -> None:
        self.rewrites[kind] += n

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_json(self) -> dict:
        return {"rewrites": dict(self.rewrites), "notes": list(self.notes)}
