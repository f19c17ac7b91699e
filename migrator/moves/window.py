"""The write window: how long writes to the organization are refused, as its users see it.

It opens at the freeze (``frozen_at``) and closes when the organization accepts writes again
(``unfrozen_at``): on the target, which the ``flip`` step unfreezes right after the route's
compare-and-set (``flipped_at``, milliseconds earlier), so the later ``unfreeze`` step does not
count (a worker dying between flip and unfreeze must not make the window look minutes long); on
the source, for a move that never flips (aborted, or failed before the flip: the freeze is
lifted). ``migrator status``, the JSON, the metrics, the ``WriteWindowTooLong`` alert and the
rebalancer all read this figure (docs/adr/0012-the-write-window.md).
"""

from __future__ import annotations

import datetime as dt

from migrator.moves import workflow as wf


def closed_at(move) -> dt.datetime | None:
    """When the window closed (None while it is open, or if it never opened)."""
    if move.frozen_at is None:
        return None
    return move.unfrozen_at


def seconds(move, now: dt.datetime | None = None) -> float | None:
    """The window's length; an open window counts up to ``now`` (None if it never opened)."""
    if move.frozen_at is None:
        return None
    end = closed_at(move) or now
    return None if end is None else max((end - move.frozen_at).total_seconds(), 0.0)


def steps_inside(strategy: str) -> tuple[str, ...]:
    """The steps of a strategy that run while the organization is read-only (freeze … flip)."""
    steps = wf.steps_for(strategy)
    return steps[steps.index("freeze"): steps.index(wf.FLIP) + 1]


def inside(strategy: str, step: str) -> bool:
    return step in steps_inside(strategy)
