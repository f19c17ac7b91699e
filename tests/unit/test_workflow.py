"""The state machine as data: every step of every strategy is one registered module with a task and a queue."""

from __future__ import annotations

import pytest

from migrator.moves import steps
from migrator.moves import workflow as wf
from migrator.moves.dispatch import OTHER_TASKS, task_queues
from migrator.moves.steps.base import QUEUES, Step


@pytest.mark.parametrize("strategy", sorted(wf.STRATEGIES))
def test_every_step_of_a_strategy_is_registered_and_routed(strategy):
    names = wf.steps_for(strategy)
    assert names[0] == wf.FIRST_STEP and names[-3:] == (wf.FLIP, "unfreeze", "verify_after_flip")
    registry = steps.registry()
    for name in names:
        step = registry[name]
        assert not step.operator
        assert step.__class__ is Step and step.name == name
        assert task_queues()[step.task] in QUEUES
        assert (step.unit_task in task_queues()) == step.fans_out
        assert (step.run or step.plan).__module__ == f"migrator.moves.steps.{name}"  # its work is in its module


def test_the_registry_is_the_modules_of_the_steps_package():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(steps.__path__)} - {"base"}
    assert set(steps.registry()) == modules
    assert {"abort", "cleanup"} <= {name for name, s in steps.registry().items() if s.operator}
    assert not set(OTHER_TASKS) & {s.task for s in steps.registry().values()}


def test_a_step_is_either_run_or_fan_out():
    with pytest.raises(ValueError, match="either run"):
        Step("x", run=print, plan=print, unit=print, fan_in=print, unit_queue="rows")
    with pytest.raises(ValueError, match="needs plan, unit and fan_in"):
        Step("x", plan=print)
    with pytest.raises(ValueError, match="queue of its units"):
        Step("x", plan=print, unit=print, fan_in=print)


@pytest.mark.parametrize("strategy", sorted(wf.STRATEGIES))
def test_next_step_walks_the_strategy_once(strategy):
    steps_, step, seen = wf.steps_for(strategy), wf.FIRST_STEP, []
    while step is not None:
        seen.append(step)
        step = wf.next_step(strategy, step)
    assert tuple(seen) == steps_


def test_online_freezes_only_after_the_bulk_copy_and_its_verification():
    steps_ = wf.steps_for("online")
    assert steps_.index("capture") < steps_.index("copy_rows") < steps_.index("catch_up") < steps_.index("verify") \
        < steps_.index("freeze")
    assert steps_.index("freeze") < steps_.index("final_delta") < steps_.index("verify_changes") < steps_.index("flip")
    frozen = wf.steps_for("frozen")
    assert frozen.index("freeze") < frozen.index("copy_rows")


def test_before_flip_covers_every_step_before_the_flip_of_each_strategy():
    for names in wf.STRATEGIES.values():
        flip = names.index(wf.FLIP)
        assert all(wf.is_before_flip(s, False) for s in names[: flip + 1])
        assert not any(wf.is_before_flip(s, False) for s in names[flip + 1:])
        assert not wf.is_before_flip("copy_rows", True)
