"""The rebalancing planner: examples, and properties over many random fleets (hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.rebalance.planner import CellLoad, InFlight, OrgLoad, Thresholds, is_hot, plan_cell, projected

MB = 1_000_000


def _cells(hot_bytes=100 * MB, hot_orgs=10, targets=((20 * MB, 2), (50 * MB, 5))):
    th = Thresholds(high_bytes=80 * MB, low_bytes=60 * MB)
    cells = [CellLoad("cell-1", hot_bytes, hot_orgs, th)]
    for i, (b, n) in enumerate(targets, start=2):
        cells.append(CellLoad(f"cell-{i}", b, n, th))
    return cells


def _orgs(sizes, cell="cell-1"):
    return [OrgLoad(i + 1, cell, b, rows=b // 100, window_s=b / MB) for i, b in enumerate(sizes)]


def test_fewest_bytes_that_reach_low_water():
    # 100 MB, low water 60 MB: 40 MB must leave. 40 = 25 + 15 beats 45 alone and 30 + 15.
    orgs = _orgs([45 * MB, 30 * MB, 25 * MB, 15 * MB, 5 * MB])
    plan = plan_cell("cell-1", _cells(), orgs)
    assert plan.reaches_low_water and plan.goal == "low_water" and plan.exhaustive
    assert plan.bytes_moved == 40 * MB
    assert sorted(i.organization_id for i in plan.items) == [3, 4]
    assert plan.after["bytes"] == 60 * MB
    assert all(i.reason for i in plan.items)
    assert "60.0 MB" in plan.summary


def test_never_pushes_a_target_above_high_water():
    # Targets have 10 MB and 5 MB of room: a 12 MB organization fits nowhere.
    cells = _cells(targets=((70 * MB, 2), (75 * MB, 2)))
    plan = plan_cell("cell-1", cells, _orgs([12 * MB, 9 * MB, 4 * MB]))
    for t in plan.targets:
        assert t["after_bytes"] <= 80 * MB
    assert 1 not in [i.organization_id for i in plan.items]
    assert not plan.reaches_low_water  # 40 MB cannot leave: at most 13 MB fits
    assert plan.goal in ("high_water", "partial")


def test_skips_pinned_cooling_and_moving_with_reasons():
    orgs = [OrgLoad(1, "cell-1", 40 * MB, pinned=True, note="by alice: customer freeze"),
            OrgLoad(2, "cell-1", 40 * MB, cooling=True, note="last move ended 2.0 h ago"),
            OrgLoad(3, "cell-1", 40 * MB, moving=True),
            OrgLoad(4, "cell-1", 40 * MB, window_s=900.0),
            OrgLoad(5, "cell-1", 41 * MB, window_s=3.0)]
    plan = plan_cell("cell-1", _cells(), orgs, max_window_s=600)
    assert [i.organization_id for i in plan.items] == [5]
    reasons = {s["organization_id"]: s["reason"] for s in plan.skipped}
    assert "pinned" in reasons[1] and "alice" in reasons[1]
    assert "cooling" in reasons[2]
    assert "moving" in reasons[3]
    assert "write window" in reasons[4]


def test_moves_under_way_count_in_projections():
    orgs = _orgs([30 * MB, 20 * MB, 10 * MB])
    # 30 MB of org 1 is already leaving for cell-2: only 10 MB more must go.
    flight = [InFlight(1, "cell-1", "cell-2", 30 * MB)]
    plan = plan_cell("cell-1", _cells(), [o if o.organization_id != 1 else OrgLoad(1, "cell-1", 30 * MB, moving=True)
                                          for o in orgs], in_flight=flight)
    assert [i.organization_id for i in plan.items] == [3]
    assert projected(_cells(), flight)["cell-2"] == (50 * MB, 3)


def test_nothing_to_do_below_low_water():
    plan = plan_cell("cell-1", _cells(hot_bytes=50 * MB), _orgs([10 * MB]))
    assert plan.items == [] and plan.reaches_low_water and "nothing to move" in plan.summary


def test_org_count_marks():
    th = Thresholds(high_orgs=5, low_orgs=3)
    cells = [CellLoad("a", 0, 6, th), CellLoad("b", 0, 1, th), CellLoad("c", 0, 4, th)]
    orgs = [OrgLoad(i, "a", b) for i, b in enumerate([50, 10, 30, 20, 40, 60], start=1)]
    plan = plan_cell("a", cells, orgs)
    assert plan.reaches_low_water
    assert sorted(i.bytes for i in plan.items) == [10, 20, 30]  # three smallest
    assert [t["after_orgs"] for t in plan.targets] == [4, 4]  # b: 1+3 ≤ 5 ... c: 4+0


def test_unknown_or_inactive_targets():
    cells = _cells() + [CellLoad("cell-9", 0, 0, Thresholds(high_bytes=80 * MB), accepts=False, note="draining")]
    plan = plan_cell("cell-1", cells, _orgs([40 * MB]))
    assert all(i.target != "cell-9" for i in plan.items)
    assert [t for t in plan.targets if t["cell"] == "cell-9"][0]["excluded"] == "draining"
    assert plan_cell("nope", cells, []).goal == "none"


def test_is_hot():
    assert is_hot(_cells()[0]) and not is_hot(_cells()[1])


def test_large_fleet_terminates_quickly():
    import random

    rng = random.Random(3)
    orgs = [OrgLoad(i, "cell-1", rng.randint(1, 5_000) * 1000, window_s=rng.random() * 60) for i in range(3000)]
    total = sum(o.bytes for o in orgs)
    th = Thresholds(high_bytes=int(total * 0.99), low_bytes=int(total * 0.97))
    cells = [CellLoad("cell-1", total, 3000, th)] + [CellLoad(f"c{i}", int(total * 0.9), 100, th) for i in range(4)]
    plan = plan_cell("cell-1", cells, orgs, max_moves=500, node_budget=50_000)  # the budget bounds the search
    assert plan.reaches_low_water
    for t in plan.targets:
        assert t["after_bytes"] <= th.high_bytes


# ------------------------------------------------------------------------------------ properties


@st.composite
def fleets(draw, max_orgs=6, max_targets=3):
    n_targets = draw(st.integers(1, max_targets))
    dims = draw(st.sampled_from(["bytes", "orgs", "both"]))
    orgs = []
    n = draw(st.integers(0, max_orgs))
    for i in range(n):
        orgs.append(OrgLoad(
            organization_id=i + 1, cell="hot", bytes=draw(st.integers(0, 60)), rows=draw(st.integers(0, 100)),
            window_s=draw(st.floats(0, 100, allow_nan=False)), pinned=draw(st.integers(0, 4)) == 0,
            cooling=draw(st.integers(0, 5)) == 0,
            moving=draw(st.integers(0, 6)) == 0))
    hot_bytes = sum(o.bytes for o in orgs) + draw(st.integers(0, 40))

    def th(load_b, load_n, room_b, room_n, gap_b=200, gap_n=12):
        """Marks around the cell's load: a little above it (targets) or around it (the hot cell)."""
        high_b = max(0, load_b + draw(st.integers(*room_b))) if dims in ("bytes", "both") else None
        low_b = None if high_b is None else draw(st.integers(max(0, high_b - gap_b), high_b))
        high_n = max(0, load_n + draw(st.integers(*room_n))) if dims in ("orgs", "both") else None
        low_n = None if high_n is None else draw(st.integers(max(0, high_n - gap_n), high_n))
        return Thresholds(high_bytes=high_b, low_bytes=low_b, high_orgs=high_n, low_orgs=low_n)

    hot_orgs = n + draw(st.integers(0, 3))
    cells = [CellLoad("hot", hot_bytes, hot_orgs, th(hot_bytes, hot_orgs, (-40, 10), (-3, 1), 30, 2))]
    for t in range(n_targets):
        b, k = draw(st.integers(0, 200)), draw(st.integers(0, 10))
        cells.append(CellLoad(f"t{t}", b, k, th(b, k, (-20, 120), (-1, 5)), accepts=draw(st.integers(0, 5)) > 0))
    max_window = draw(st.one_of(st.none(), st.none(), st.floats(1, 100, allow_nan=False)))
    # Moves under way (organizations not among the candidates), between any two cells.
    names = [c.name for c in cells]
    flight = [InFlight(1000 + k, *draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True)),
                       draw(st.integers(0, 40))) for k in range(draw(st.integers(0, 2)))]
    return cells, orgs, max_window, flight


def _eligible(org, max_window):
    return not (org.pinned or org.cooling or org.moving) and (max_window is None or org.window_s <= max_window)


def _reaches(load, th, moved_b, moved_n):
    ok = True
    if th.low("bytes") is not None:
        ok &= load[0] - moved_b <= th.low("bytes")
    if th.low("orgs") is not None:
        ok &= load[1] - moved_n <= th.low("orgs")
    return ok


def _fits(cells_by, loads, name, add_b, add_n):
    c = cells_by[name]
    if not c.accepts:
        return False
    t = c.thresholds
    return (t.high_bytes is None or loads[name][0] + add_b <= t.high_bytes) and \
        (t.high_orgs is None or loads[name][1] + add_n <= t.high_orgs)


def brute_force_min_bytes(cells, orgs, max_window, max_moves, flight=()):
    """The fewest bytes of any assignment reaching low water, or None (all (T+1)^n assignments)."""
    by = {c.name: c for c in cells}
    loads = projected(cells, flight)
    cands = [o for o in orgs if _eligible(o, max_window)]
    targets = [c.name for c in cells if c.name != "hot"]
    best = None
    for choice in itertools.product([None, *targets], repeat=len(cands)):
        picked = [(o, t) for o, t in zip(cands, choice, strict=True) if t is not None]
        if len(picked) > max_moves:
            continue
        if not all(_fits(by, loads, t, sum(o.bytes for o, tt in picked if tt == t),
                         sum(1 for _, tt in picked if tt == t)) for t in {tt for _, tt in picked}):
            continue
        moved = sum(o.bytes for o, _ in picked)
        if _reaches(loads["hot"], by["hot"].thresholds, moved, len(picked)):
            best = moved if best is None else min(best, moved)
    return best


PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(fleets(), st.integers(1, 6))
def test_properties_against_brute_force(fleet, max_moves):
    cells, orgs, max_window, flight = fleet
    by = {c.name: c for c in cells}
    plan = plan_cell("hot", cells, orgs, max_moves=max_moves, max_window_s=max_window, in_flight=flight)
    loads = projected(cells, flight)

    # Never picks a pinned, cooling-down or moving organization, nor one over the window limit; each once.
    picked = {i.organization_id for i in plan.items}
    assert len(picked) == len(plan.items) <= max_moves
    for o in orgs:
        if o.organization_id in picked:
            assert _eligible(o, max_window)
    # Never overshoots a target (nor sends to the hot cell or a cell that does not accept).
    for t in {i.target for i in plan.items}:
        assert t != "hot"
        mine = [i for i in plan.items if i.target == t]
        assert _fits(by, loads, t, sum(i.bytes for i in mine), len(mine))
    # Reaches low water whenever any plan could, with the fewest bytes.
    best = brute_force_min_bytes(cells, orgs, max_window, max_moves, flight)
    moved_b = sum(i.bytes for i in plan.items)
    reached = _reaches(loads["hot"], by["hot"].thresholds, moved_b, len(plan.items))
    assert plan.reaches_low_water == (best is not None)
    if best is not None:
        assert reached
        assert moved_b == best, plan.as_dict()
    # Every choice carries a reason; the plan explains itself.
    assert all(i.reason for i in plan.items)
    assert plan.summary


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(max_orgs=40, max_targets=5), st.integers(1, 40))
def test_always_terminates_and_stays_safe_on_bigger_fleets(fleet, max_moves):
    cells, orgs, max_window, flight = fleet
    by = {c.name: c for c in cells}
    loads = projected(cells, flight)
    plan = plan_cell("hot", cells, orgs, max_moves=max_moves, max_window_s=max_window, node_budget=20_000,
                     in_flight=flight)
    for t in {i.target for i in plan.items}:
        mine = [i for i in plan.items if i.target == t]
        assert _fits(by, loads, t, sum(i.bytes for i in mine), len(mine))
    for o in orgs:
        if o.organization_id in {i.organization_id for i in plan.items}:
            assert _eligible(o, max_window)
