"""The state machine as data: every step of every strategy has a task, a queue and its work."""

from __future__ import annotations

import pytest

from migrator.moves import workflow as wf
from migrator.moves.dispatch import TASK_QUEUES, step_task, unit_task
from migrator.moves.runner import STEP_WORK
from migrator.moves.units import FAN_IN, PLANNERS, WORK


@pytest.mark.parametrize("strategy", sorted(wf.STRATEGIES))
def test_every_step_is_routed_and_has_work(strategy):
    steps = wf.steps_for(strategy)
    assert steps[0] == "preflight" and steps[-2:] == ("flip", "unfreeze")
    for step in steps:
        assert step_task(step) in TASK_QUEUES
        assert step in wf.STEP_MODULES
        if step in wf.FAN_OUT:
            assert unit_task(step) in TASK_QUEUES
            assert step in PLANNERS and step in WORK and step in FAN_IN
        else:
            assert step in STEP_WORK


@pytest.mark.parametrize("strategy", sorted(wf.STRATEGIES))
def test_next_step_walks_the_strategy_once(strategy):
    steps, step, seen = wf.steps_for(strategy), "preflight", []
    while step is not None:
        seen.append(step)
        step = wf.next_step(strategy, step)
    assert tuple(seen) == steps


def test_online_freezes_only_after_the_bulk_copy():
    steps = wf.steps_for("online")
    assert steps.index("capture") < steps.index("copy_rows") < steps.index("catch_up") < steps.index("freeze")
    assert steps.index("freeze") < steps.index("final_delta") < steps.index("verify") < steps.index("flip")
    frozen = wf.steps_for("frozen")
    assert frozen.index("freeze") < frozen.index("copy_rows")
