"""What a pass did, as it reports it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analysis import GraphStats


@dataclass
class PassReport:
    """Rewrites a pass made (by kind), the places it left alone, with the reason, and rows about
    single layers (``{"layer": ..., ...}``: the sparsity found, the channels removed)."""

    rewrites: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())

    def count(self, kind: str, n: int = 1) -> None:
        self.rewrites[kind] += n

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_json(self) -> dict:
        out = {"rewrites": dict(self.rewrites), "notes": list(self.notes)}
        if self.layers:
            out["layers"] = [dict(row) for row in self.layers]
        return out


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
