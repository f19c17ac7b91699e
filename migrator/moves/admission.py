"""Whether a new move may start: the fleet's concurrency guardrails, for every move (docs/adr/0014).

``rebalance.max_moves_per_cell`` (or a cell's ``max_concurrent_moves``) bounds the active moves from
or to one cell, ``rebalance.max_moves_total`` those of the whole fleet, whoever asked: the rebalancer,
an operator's CLI or the API. An operator may pass ``force`` with a reason; the move then starts
anyway and its history keeps the override.

The check and the insert of the new move happen in one transaction holding a transaction-level
advisory lock (:data:`ADMISSION_LOCK`), so concurrent requests are admitted one after the other:
nine simultaneous requests for one cell with a limit of 1 admit exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.control.models import Move
from migrator.errors import GuardrailExceeded, MoveConflict
from migrator.moves import workflow as wf

ADMISSION_LOCK = 0x6D6761646D697400  # "mgadmit\0": one admission at a time across processes


@dataclass
class Guardrails:
    """Free move slots per cell and overall, counted from the active moves (any origin)."""

    settings: object
    per_cell: dict[str, int] = field(default_factory=dict)
    total: int = 0

    @classmethod
    def from_moves(cls, settings, active_moves) -> Guardrails:
        g = cls(settings)
        for m in active_moves:
            g.take(m.source_cell, m.target_cell)
        return g

    def limit(self, cell: str) -> int:
        own = self.settings.rebalance.thresholds(cell).max_concurrent_moves
        return self.settings.rebalance.max_moves_per_cell if own is None else own

    def _limit_key(self, cell: str) -> str:
        own = self.settings.rebalance.thresholds(cell).max_concurrent_moves
        return "rebalance.max_moves_per_cell" if own is None else f"rebalance.cells.{cell}.max_concurrent_moves"

    def why_not(self, source: str, target: str) -> str | None:
        """Which guardrail a move source -> target would exceed, or None when it fits."""
        r = self.settings.rebalance
        if self.total >= r.max_moves_total:
            return f"{self.total} moves are active in the fleet (rebalance.max_moves_total {r.max_moves_total})"
        for cell in (source, target):
            if self.per_cell.get(cell, 0) >= self.limit(cell):
                return (f"{self.per_cell.get(cell, 0)} moves are active from or to {cell} "
                        f"({self._limit_key(cell)} {self.limit(cell)}, limit per cell)")
        return None

    def take(self, source: str, target: str) -> None:
        self.total += 1
        for cell in {source, target}:
            self.per_cell[cell] = self.per_cell.get(cell, 0) + 1


def admit(session: Session, settings, *, organization_id: int, source: str, target: str,
          force: bool = False) -> str | None:
    """Inside the transaction that will insert the move: take the admission lock, count the active
    moves, refuse with :class:`GuardrailExceeded` when the move would exceed a limit. With ``force``,
    returns the guardrail it exceeds (for the history) instead of refusing; None when it fits."""
    session.execute(select(func.pg_advisory_xact_lock(ADMISSION_LOCK)))
    active = session.execute(select(Move.id, Move.organization_id, Move.state, Move.step, Move.source_cell,
                                    Move.target_cell).where(Move.state.in_(wf.ACTIVE_STATES))).all()
    for m in active:  # the more precise refusal first (the unique index stays the last word)
        if m.organization_id == organization_id:
            raise MoveConflict(f"organization {organization_id} already has an active move: move {m.id} "
                               f"({m.state}, step {m.step})", "wait for it to finish, or `migrator abort` it first")
    why = Guardrails.from_moves(settings, active).why_not(source, target)
    if why is None or force:
        return why
    busy = [str(m.id) for m in active if {m.source_cell, m.target_cell} & {source, target}][:5]
    raise GuardrailExceeded(
        f"move of organization {organization_id} {source} -> {target} refused: {why}"
        + (f"; active: {', '.join(busy)}" if busy else ""),
        "wait for a move to finish (migrator status), raise the limit in the config, or start it anyway with "
        "--force --reason '...' (API: \"force\": true and a reason)")
