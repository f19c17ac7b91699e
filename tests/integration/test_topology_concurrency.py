"""Concurrent flips of one route: exactly one compare-and-set wins, every other one is refused."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from migrator.control.engine import control_engine, upgrade_control_db
from migrator.errors import MigratorError, StaleToken, StaleVersion
from migrator.topology.service import TopologyService

pytestmark = pytest.mark.integration

RACERS = 24


@pytest.fixture
def frozen(scratch_db):
    """Organization 1 on cell src, frozen by token tok, and RACERS target cells."""
    upgrade_control_db(scratch_db)
    topo = TopologyService(scratch_db, sequence_block=10)
    for name in ["src", *(f"t{i}" for i in range(RACERS))]:
        topo.register_cell(name)
    topo.register_route(1, "src")
    topo.freeze(1, "tok", expected_cell="src")
    yield topo
    control_engine(scratch_db).dispose()


def _flip_in_process(dsn, target, barrier, results):
    topo = TopologyService(dsn)
    barrier.wait()
    try:
        route = topo.flip(1, "src", target, expected_version=1, token="tok")
        results.put((target, "ok", route.cell, route.version))
    except MigratorError as exc:
        results.put((target, type(exc).__name__, None, None))


def _flips(frozen):
    return [h for h in frozen.history(1) if h["action"] == "flip"]


def test_racing_processes_flip_exactly_once(frozen):
    """Independent processes (own connections) race to flip the same version to different cells."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_flip_in_process, args=(frozen.control_dsn, f"t{i}", barrier, results))
             for i in range(RACERS)]
    [p.start() for p in procs]
    outcomes = [results.get(timeout=120) for _ in procs]
    [p.join(30) for p in procs]
    winners = [o for o in outcomes if o[1] == "ok"]
    assert len(winners) == 1, outcomes
    target, _, cell, version = winners[0]
    assert (cell, version) == (target, 2)
    assert {o[1] for o in outcomes if o[1] != "ok"} == {"StaleVersion"}
    route = frozen.classify(1)
    assert (route.cell, route.version, route.held_by("tok")) == (target, 2, True)
    assert len(_flips(frozen)) == 1


def test_racing_threads_flip_exactly_once_then_stale_callers_are_refused(frozen):
    barrier = threading.Barrier(RACERS)
    outcomes: list[tuple[str, object]] = []

    def flip(target):
        barrier.wait()
        try:
            outcomes.append((target, frozen.flip(1, "src", target, expected_version=1, token="tok")))
        except MigratorError as exc:
            outcomes.append((target, exc))

    threads = [threading.Thread(target=flip, args=(f"t{i}",)) for i in range(RACERS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [(t, r) for t, r in outcomes if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, StaleVersion) for _, r in outcomes if isinstance(r, Exception))
    winner = winners[0][0]
    assert len(_flips(frozen)) == 1

    # Late callers racing again: stale version or wrong token, all refused, nothing written.
    errors: list[Exception] = []

    def late(i):
        try:
            if i % 2:
                frozen.flip(1, winner, "src", expected_version=1, token="tok")
            else:
                frozen.flip(1, winner, "src", expected_version=2, token="other")
        except MigratorError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=late, args=(i,)) for i in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(errors) == 20
    assert sum(isinstance(e, StaleVersion) for e in errors) == 10
    assert sum(isinstance(e, StaleToken) for e in errors) == 10
    assert frozen.classify(1).cell == winner and len(_flips(frozen)) == 1


def test_racing_versions_only_the_current_one_wins(frozen):
    """Callers holding different expected versions: only the one matching the route flips."""
    barrier = threading.Barrier(10)
    outcomes = []

    def flip(version):
        barrier.wait()
        try:
            outcomes.append((version, frozen.flip(1, "src", "t0", expected_version=version, token="tok")))
        except MigratorError as exc:
            outcomes.append((version, exc))

    threads = [threading.Thread(target=flip, args=(v,)) for v in range(-4, 6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(outcomes) == 10
    ok = sorted(v for v, r in outcomes if not isinstance(r, Exception))
    assert ok == [1]
    assert len(_flips(frozen)) == 1
