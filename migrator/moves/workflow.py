"""The move state machine, as data.

A move walks ``STEPS`` in order. Steps in ``FAN_OUT`` are split into units (key ranges of a
table, blob ranges) that any number of workers run in parallel; the step finishes when the
control database counts no pending unit (fan-in in PostgreSQL, not with Celery chords).
Where each step's work lives: ``STEP_MODULES`` (read this to find the code of a step).
"""

from __future__ import annotations

# The frozen strategy: freeze first, then copy everything while the organization is read-only.
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

# The online strategy (docs/adr/0009-online-moves.md): capture changes, copy while writable, catch
# up until the delta is small, and only then freeze for the final delta, verification and flip.
ONLINE_STEPS: tuple[str, ...] = (
    "preflight",
    "capture",
    "copy_rows",
    "copy_blobs",
    "catch_up",
    "freeze",
    "drain",
    "final_delta",
    "verify",
    "flip",
    "unfreeze",
)

STRATEGIES: dict[str, tuple[str, ...]] = {"frozen": STEPS, "online": ONLINE_STEPS}
ALL_STEPS: tuple[str, ...] = tuple(dict.fromkeys(ONLINE_STEPS + STEPS))


def steps_for(strategy: str) -> tuple[str, ...]:
    return STRATEGIES[strategy]


def next_step(strategy: str, step: str) -> str | None:
    steps = steps_for(strategy)
    i = steps.index(step)
    return steps[i + 1] if i + 1 < len(steps) else None


NEXT_STEP: dict[str, str | None] = {step: next_step("frozen", step) for step in STEPS}

FAN_OUT: frozenset[str] = frozenset({"copy_rows", "copy_blobs", "verify"})

# Where the work of each step lives.
STEP_MODULES: dict[str, str] = {
    "preflight": "migrator.moves.preflight",
    "capture": "migrator.moves.online",
    "catch_up": "migrator.moves.online",
    "final_delta": "migrator.moves.online",
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
BEFORE_FLIP: frozenset[str] = frozenset(ONLINE_STEPS[: ONLINE_STEPS.index("flip")])


def step_index(step: str, strategy: str = "frozen") -> int:
    return steps_for(strategy).index(step)


def is_before_flip(step: str, flipped: bool) -> bool:
    return not flipped and step in BEFORE_FLIP | {"flip"}
