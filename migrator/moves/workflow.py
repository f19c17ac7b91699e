"""The move state machine, as data: the strategies (ordered step names) and the move states.

Each step's work lives in its own module, ``migrator/moves/steps/<step>.py`` (the registry:
``migrator.moves.steps.registry()``). A move walks its strategy's steps in order; fan-out steps
are split into units that any number of workers run in parallel, and the step finishes when the
control database counts no pending unit (fan-in in PostgreSQL, not with Celery chords).
"""

from __future__ import annotations

from migrator.control.models import ACTIVE_MOVE_STATES, TERMINAL_MOVE_STATES

# The frozen strategy: freeze first, then copy everything while the organization is read-only.
FROZEN: tuple[str, ...] = (
    "preflight",
    "freeze",
    "drain",
    "copy_rows",
    "copy_blobs",
    "verify",
    "flip",
    "unfreeze",
    "verify_after_flip",
)

# The online strategy (docs/adr/0009-online-moves.md, 0012): capture changes, copy while writable,
# catch up until the delta is small, verify every range while still writable (and, by key, what changed
# meanwhile), and only then freeze for the final delta, the keys changed since, and the flip.
ONLINE: tuple[str, ...] = (
    "preflight",
    "capture",
    "copy_rows",
    "copy_blobs",
    "catch_up",
    "verify",
    "verify_catch_up",
    "freeze",
    "drain",
    "final_delta",
    "verify_changes",
    "flip",
    "unfreeze",
    "verify_after_flip",
)

STRATEGIES: dict[str, tuple[str, ...]] = {"frozen": FROZEN, "online": ONLINE}
FIRST_STEP = "preflight"
FLIP = "flip"


def steps_for(strategy: str) -> tuple[str, ...]:
    return STRATEGIES[strategy]


def next_step(strategy: str, step: str) -> str | None:
    steps = steps_for(strategy)
    i = steps.index(step)
    return steps[i + 1] if i + 1 < len(steps) else None


# Move states (the control database's models define them: its partial unique index needs them).
# A move in one of the active states holds its organization: the database allows one per organization.
ACTIVE_STATES: tuple[str, ...] = ACTIVE_MOVE_STATES
TERMINAL_STATES: tuple[str, ...] = TERMINAL_MOVE_STATES
QUEUED, RUNNING, PAUSED, FAILED, ABORTING = ACTIVE_STATES
COMPLETED, ABORTED, REJECTED, CLEANED = TERMINAL_STATES

# Until the flip the source is authoritative and the move can be aborted; after it, the way back
# is a move in the other direction. (In every strategy the flip comes after all of these.)
BEFORE_FLIP: frozenset[str] = frozenset(s for steps in STRATEGIES.values() for s in steps[: steps.index(FLIP)])


def is_before_flip(step: str, flipped: bool) -> bool:
    """Whether a move at ``step`` may still have its source authoritative (the flip step included:
    it may not have committed)."""
    return not flipped and step in BEFORE_FLIP | {FLIP}
