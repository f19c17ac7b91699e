"""The steps of a move, one module per verb (``preflight.py`` … ``unfreeze.py``, ``abort.py``, ``cleanup.py``).

Each module declares its step once, as ``STEP`` (:class:`~migrator.moves.steps.base.Step`): its name
(the module's name), its queue, and its work. The strategies in ``migrator/moves/workflow.py`` are
lists of step names; the runner, the dispatcher and the Celery tasks read this registry. Adding a
step means one new module here and one line in a strategy.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from migrator.moves import workflow as wf
from migrator.moves.steps.base import BLOBS, CONTROL, QUEUES, ROWS, Step

__all__ = ["BLOBS", "CONTROL", "QUEUES", "ROWS", "Step", "get", "registry"]


@cache
def registry() -> dict[str, Step]:
    """Every step, by name (imported on first use: the step modules pull in the copy and verify code)."""

    steps: dict[str, Step] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        step = getattr(module, "STEP", None)
        if not isinstance(step, Step):
            raise RuntimeError(f"{module.__name__} declares no STEP")
        if step.name != info.name:
            raise RuntimeError(f"{module.__name__} declares step {step.name!r}: a step lives in the module of its name")
        steps[step.name] = step
    for strategy, names in wf.STRATEGIES.items():
        for name in names:
            if name not in steps or steps[name].operator:
                raise RuntimeError(f"strategy {strategy!r} names step {name!r}, which has no module in {__name__}")
    return steps


def get(name: str) -> Step:
    return registry()[name]
