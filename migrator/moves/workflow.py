"""The move state machine, as data.

A move walks ``STEPS`` in order. Steps in ``FAN_OUT`` are split into units (key ranges of a
table, blob ranges) that any number of workers run in parallel; the step finishes when the
control database counts no pending unit (fan-in in PostgreSQL, not with Celery chords).
Where each step's work lives: ``STEP_MODULES`` (read this to find the code of a step).
"""

from __future__ import annotations

STEPS: tuple[str, ...] = (
    "preflight",
    "freeze",
    "drain",
    "copy_rows",
    "copy_blobs",
    "verify",
    "flip",
    "unfreeze",
)

NEXT_STEP: dict[str, str | None] = {
    step: (STEPS[i + 1] if i + 1 < len(STEPS) else None) for i, step in enumerate(STEPS)
}

FAN_OUT: frozenset[str] = frozenset({"copy_rows", "copy_blobs", "verify"})

# Where the work of each step lives.
STEP_MODULES: dict[str, str] = {
    "preflight": "migrator.moves.preflight",
    "freeze": "migrator.moves.freeze",
    "drain": "migrator.moves.freeze",
    "copy_rows": "migrator.copy.rows",
    "copy_blobs": "migrator.blobs.copier",
    "verify": "migrator.verify.checksums",
    "flip": "migrator.moves.cutover",
    "unfreeze": "migrator.moves.cutover",
    "cleanup": "migrator.moves.cleanup",
    "abort": "migrator.moves.abort",
}

# Move states.
QUEUED, RUNNING, PAUSED, FAILED, ABORTING = "queued", "running", "paused", "failed", "aborting"
COMPLETED, ABORTED, REJECTED, CLEANED = "completed", "aborted", "rejected", "cleaned"

# A move in one of these holds its organization: the database allows one per organization.
ACTIVE_STATES: tuple[str, ...] = (QUEUED, RUNNING, PAUSED, FAILED, ABORTING)
TERMINAL_STATES: tuple[str, ...] = (COMPLETED, ABORTED, REJECTED, CLEANED)

# Until the flip the source is authoritative and the move can be aborted; after it, the way back
# is a move in the other direction.
BEFORE_FLIP: frozenset[str] = frozenset(STEPS[: STEPS.index("flip")])


def step_index(step: str) -> int:
    return STEPS.index(step)


def is_before_flip(step: str, flipped: bool) -> bool:
    return not flipped and step in BEFORE_FLIP | {"flip"}
