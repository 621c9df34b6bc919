"""What a pass did, as it reports it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analysis import GraphStats


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


@dataclass
class BlockReport(PassReport):
    """A report for passes that rewrite whole blocks: also the blocks left alone, counted by
    reason (each reason is a note too), and the graph's statistics before and after."""

    refused: Counter = field(default_factory=Counter)
    before: GraphStats | None = None
    after: GraphStats | None = None

    def refuse(self, reason: str, n: int = 1) -> None:
        self.refused[reason] += n
        self.note(reason)

    def to_json(self) -> dict:
        out = super().to_json()
        out["blocks"] = {"found": self.total + sum(self.refused.values()), "rewritten": self.total,
                         "refused": dict(self.refused)}
        if self.before is not None and self.after is not None:
            out["params"] = [self.before.params, self.after.params]
            out["macs"] = [self.before.macs, self.after.macs]
        return out
