"""TopologyService against a fresh control database: cells, ranges, routes, freeze/flip/unfreeze."""

from __future__ import annotations

import threading

import pytest

from migrator import errors as err
from migrator.control.engine import control_engine, upgrade_control_db
from migrator.fleet.processes import free_port
from migrator.topology.service import RouteConflict, RouteInfo, TopologyService, token_digest

pytestmark = pytest.mark.integration

BLOCK = 1000


@pytest.fixture
def topo(scratch_db):
    upgrade_control_db(scratch_db)
    yield TopologyService(scratch_db, sequence_block=BLOCK)
    control_engine(scratch_db).dispose()


@pytest.fixture
def routed(topo):
    """Cells a, b, c and organization 7 routed to a."""
    for name in ("a", "b", "c"):
        topo.register_cell(name)
    topo.register_route(7, "a", actor="test", reason="seed")
    return topo


def actions(topo, org=7):
    return [(h["action"], h["from_cell"], h["to_cell"], h["version"]) for h in topo.history(org)]


# -- cells --------------------------------------------------------------------------------------


def test_sequence_ranges_start_at_one_and_are_disjoint(topo):
    cells = [topo.register_cell(n, f"addr-{n}") for n in ("a", "b", "c")]
    assert [(c.seq_min, c.seq_max) for c in cells] == [(1, 1000), (1001, 2000), (2001, 3000)]
    assert topo.list_cells() == cells
    assert topo.get_cell("b").address == "addr-b"


def test_register_cell_is_idempotent_and_updates_address_and_state_only(topo):
    first = topo.register_cell("a", "old")
    topo.register_cell("b")
    again = topo.register_cell("a", "new", state="draining")
    assert (again.seq_min, again.seq_max) == (first.seq_min, first.seq_max)
    assert (again.address, again.state) == ("new", "draining")
    assert topo.register_cell("a").address == "new"  # no address given: kept
    assert len(topo.list_cells()) == 2


def test_concurrent_registrations_never_overlap(topo):
    barrier = threading.Barrier(12)
    results, errors = [], []

    def register(i):
        barrier.wait()
        try:
            results.append(topo.register_cell(f"cell-{i % 6}"))  # each name twice, at once
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    cells = topo.list_cells()
    assert len(cells) == 6
    ranges = sorted((c.seq_min, c.seq_max) for c in cells)
    assert ranges == [(1 + i * BLOCK, (i + 1) * BLOCK) for i in range(6)]
    assert {(r.name, r.seq_min) for r in results} == {(c.name, c.seq_min) for c in cells}


def test_cell_errors(topo):
    with pytest.raises(err.UnknownCell, match="'nope'"):
        topo.get_cell("nope")
    with pytest.raises(err.UnknownCell):
        topo.set_cell_state("nope", "draining")
    topo.register_cell("a")
    assert topo.set_cell_state("a", "offline").state == "offline"
    with pytest.raises(err.MigratorError, match="not one of"):
        topo.set_cell_state("a", "sleepy")
    with pytest.raises(err.MigratorError, match="cell name"):
        topo.register_cell("bad name!")


# -- routes -------------------------------------------------------------------------------------


def test_register_route(routed):
    route = routed.classify(7)
    assert route == RouteInfo(7, "a", 1, "active", None)
    assert routed.register_route(7, "a") == route  # idempotent, no second history row
    assert actions(routed) == [("register", None, "a", 1)]
    assert routed.history(7)[0]["actor"] == "test"
    with pytest.raises(RouteConflict, match="already routed to a") as exc:
        routed.register_route(7, "b")
    assert exc.value.code == "route_conflict"
    with pytest.raises(err.UnknownCell):
        routed.register_route(8, "zzz")
    with pytest.raises(err.UnknownOrganization, match="organization 8"):
        routed.classify(8)
    routed.register_route(8, "b")
    assert [r.organization_id for r in routed.list_routes()] == [7, 8]
    assert [r.organization_id for r in routed.list_routes("b")] == [8]
    assert routed.list_routes("c") == []


def test_freeze_flip_unfreeze(routed):
    frozen = routed.freeze(7, "t1", expected_cell="a", actor="mover", reason="rebalance")
    assert frozen == RouteInfo(7, "a", 1, "frozen", token_digest("t1"))
    assert frozen.held_by("t1") and not frozen.held_by("t2") and frozen.holder(["t0", "t1"]) == "t1"
    assert routed.freeze(7, "t1", expected_cell="a") == frozen  # idempotent
    flipped = routed.flip(7, "a", "b", expected_version=1, token="t1")
    assert flipped == RouteInfo(7, "b", 2, "frozen", token_digest("t1"))
    assert routed.flip(7, "a", "b", expected_version=1, token="t1") == flipped  # replay: no second flip
    active = routed.unfreeze(7, "t1")
    assert active == RouteInfo(7, "b", 2, "active", None)
    assert routed.unfreeze(7, "t1") == active  # idempotent
    assert routed.flip(7, "a", "b", expected_version=1, token="t1") == active  # replay after unfreeze
    assert actions(routed) == [
        ("register", None, "a", 1), ("freeze", "a", "a", 1), ("flip", "a", "b", 2), ("unfreeze", "b", "b", 2),
    ]
    history = routed.history(7)
    assert [h["token_digest"] for h in history] == [None] + [token_digest("t1")] * 3
    assert "t1" not in repr(history)
    assert history[1]["actor"] == "mover" and history[1]["reason"] == "rebalance"
    assert isinstance(history[0]["at"], str)


def test_freeze_refusals(routed):
    with pytest.raises(err.StaleVersion, match="not on b"):
        routed.freeze(7, "t1", expected_cell="b")
    routed.freeze(7, "t1", expected_cell="a")
    with pytest.raises(err.RouteFrozen, match="frozen by another move"):
        routed.freeze(7, "t2", expected_cell="a")
    with pytest.raises(err.UnknownOrganization):
        routed.freeze(99, "t1", expected_cell="a")
    with pytest.raises(err.MigratorError, match="token is required"):
        routed.freeze(7, "", expected_cell="a")


def test_flip_refusals(routed):
    with pytest.raises(err.StaleToken, match="not frozen"):
        routed.flip(7, "a", "b", expected_version=1, token="t1")
    routed.freeze(7, "t1", expected_cell="a")
    with pytest.raises(err.StaleToken, match=f"frozen by token sha256:{token_digest('t1')}, not by token "
                                         f"sha256:{token_digest('t2')}"):
        routed.flip(7, "a", "b", expected_version=1, token="t2")
    with pytest.raises(err.StaleVersion, match="at version 1 on a") as exc:
        routed.flip(7, "a", "b", expected_version=5, token="t1")
    assert "migrator topology history 7" in exc.value.hint
    with pytest.raises(err.InvalidMoveState, match="flip c -> b"):
        routed.flip(7, "c", "b", expected_version=1, token="t1")
    with pytest.raises(err.SameCell):
        routed.flip(7, "a", "a", expected_version=1, token="t1")
    with pytest.raises(err.UnknownCell):
        routed.flip(7, "a", "nowhere", expected_version=1, token="t1")
    with pytest.raises(err.UnknownOrganization):
        routed.flip(99, "a", "b", expected_version=1, token="t1")
    routed.flip(7, "a", "b", expected_version=1, token="t1")
    with pytest.raises(err.StaleVersion):  # another target after the flip happened
        routed.flip(7, "a", "c", expected_version=1, token="t1")
    assert [a for a, *_ in actions(routed)].count("flip") == 1
    assert routed.classify(7).cell == "b"


def test_refence_hands_the_freeze_to_a_new_attempt(routed):
    routed.freeze(7, "t1", expected_cell="a")
    with pytest.raises(err.StaleToken):
        routed.refence(7, "t0", "t2")
    assert routed.refence(7, "t1", "t2").held_by("t2")
    assert routed.refence(7, "t1", "t2").held_by("t2")  # idempotent
    with pytest.raises(err.StaleToken):
        routed.flip(7, "a", "b", expected_version=1, token="t1")  # the old attempt is fenced off
    with pytest.raises(err.StaleToken):
        routed.unfreeze(7, "t1")
    assert routed.flip(7, "a", "b", expected_version=1, token="t2").cell == "b"
    assert [a for a, *_ in actions(routed)] == ["register", "freeze", "refence", "flip"]
    routed.unfreeze(7, "t2")
    with pytest.raises(err.StaleToken, match="active"):
        routed.refence(7, "t2", "t3")  # nothing to take over


def test_history_of_unknown_organization_is_empty(routed):
    assert routed.history(12345) == []


def test_unreachable_control_database_names_it_without_password():
    dsn = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(err.CellUnavailable) as exc:
        TopologyService(dsn).classify(1)
    assert "does not answer" in exc.value.message
    assert "***" in exc.value.message and "s3cret" not in str(exc.value)


def test_control_database_without_schema_says_how_to_fix_it(scratch_db):
    with pytest.raises(err.MigratorError, match="no topology tables") as exc:
        TopologyService(scratch_db).list_cells()
    assert "migrator topology serve" in exc.value.hint
    control_engine(scratch_db).dispose()
