"""The rebalancing planner: pure logic, readings in, a plan out (no database, no clock, no I/O).

Given the load of every cell, the organizations of one hot cell and the moves already under way,
:func:`plan_cell` chooses which organizations leave the hot cell and for which target, so that:

- the hot cell ends at or below its low-water mark (bytes and/or organizations), moving the fewest
  bytes (ties: the shortest total write window, then the fewest moves);
- no target ends above its high-water mark (projected with the moves already under way);
- pinned, cooling-down and moving organizations, and those whose write window is over the limit,
  are never chosen (each is listed with the reason);
- every choice carries a reason a person can read.

The search is an exact branch and bound over (organization, target) choices with a node budget,
seeded by a greedy solution: on fleets of a few dozen candidates it finds the optimum, and it always
terminates. When the low-water mark cannot be reached by any plan it aims for the high-water mark,
and failing that moves what fits (``goal`` says which).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

INF = math.inf
DEFAULT_NODE_BUDGET = 200_000
# The most organizations one plan moves (the search recurses once per organization chosen).
MAX_MOVES = 500


@dataclass(frozen=True)
class Thresholds:
    high_bytes: int | None = None
    low_bytes: int | None = None
    high_orgs: int | None = None
    low_orgs: int | None = None

    def low(self, dim: str) -> int | None:
        """The low-water mark of a dimension; the high-water mark when no low one is set."""
        low = self.low_bytes if dim == "bytes" else self.low_orgs
        return low if low is not None else self.high(dim)

    def high(self, dim: str) -> int | None:
        return self.high_bytes if dim == "bytes" else self.high_orgs


@dataclass(frozen=True)
class CellLoad:
    """A cell as the planner sees it: its load from the latest reading and its marks."""

    name: str
    bytes: int
    orgs: int
    thresholds: Thresholds = Thresholds()
    accepts: bool = True  # may receive organizations (active, measured)
    note: str = ""  # why it does not accept


@dataclass(frozen=True)
class OrgLoad:
    organization_id: int
    cell: str
    bytes: int
    rows: int = 0
    window_s: float = 0.0  # estimated write window of its move
    pinned: bool = False
    cooling: bool = False
    moving: bool = False
    note: str = ""  # detail for a skip (e.g. "last move ended 3.0 h ago")


@dataclass(frozen=True)
class InFlight:
    """A move under way (or planned and pending): counted in both cells' projected loads."""

    organization_id: int
    source: str
    target: str
    bytes: int


@dataclass
class PlanItem:
    organization_id: int
    source: str
    target: str
    bytes: int
    rows: int
    window_s: float
    reason: str


@dataclass
class Plan:
    cell: str
    goal: str  # low_water | high_water | partial | none
    reaches_low_water: bool
    exhaustive: bool  # the search finished (the plan is optimal) rather than stopping at its budget
    items: list[PlanItem] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"organization_id", "reason"}
    targets: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    low_water: dict = field(default_factory=dict)
    summary: str = ""
    considered: int = 0

    @property
    def bytes_moved(self) -> int:
        return sum(i.bytes for i in self.items)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["bytes_moved"] = self.bytes_moved
        return data


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n == INF:
        return "unlimited"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# projections


def projected(cells: Sequence[CellLoad], in_flight: Iterable[InFlight]) -> dict[str, tuple[int, int]]:
    """(bytes, orgs) of every cell once the moves under way are done."""
    load = {c.name: [c.bytes, c.orgs] for c in cells}
    for m in in_flight:
        if m.source in load:
            load[m.source][0] -= m.bytes
            load[m.source][1] -= 1
        if m.target in load:
            load[m.target][0] += m.bytes
            load[m.target][1] += 1
    return {name: (b, n) for name, (b, n) in load.items()}


def _need(load: tuple[int, int], t: Thresholds, level: str) -> tuple[int, int]:
    """Bytes and organizations that must leave to be at or below ``level`` (low | high) water."""
    out = []
    for i, dim in enumerate(("bytes", "orgs")):
        mark = t.low(dim) if level == "low" else t.high(dim)
        out.append(max(0, load[i] - mark) if mark is not None else 0)
    return out[0], out[1]


def _capacity(load: tuple[int, int], t: Thresholds) -> tuple[float, float]:
    """What a target can still take (bytes, organizations) without going above its high water."""
    cap_b = INF if t.high_bytes is None else t.high_bytes - load[0]
    cap_n = INF if t.high_orgs is None else t.high_orgs - load[1]
    return cap_b, cap_n


# ----------------------------------------------------------------------------------------------
# eligibility


def eligibility(org: OrgLoad, hot: str, max_window_s: float | None) -> str | None:
    """Why the organization may not be chosen, or None."""
    if org.cell != hot:
        return f"lives in {org.cell}, not {hot}"
    if org.pinned:
        return "pinned by an operator" + (f" ({org.note})" if org.note else "")
    if org.moving:
        return "already moving" + (f" ({org.note})" if org.note else "")
    if org.cooling:
        return "cooling down after a recent move" + (f" ({org.note})" if org.note else "")
    if max_window_s is not None and org.window_s > max_window_s:
        return f"write window {org.window_s:.1f} s is over the limit of {max_window_s:g} s"
    if org.bytes < 0:
        return "no valid reading"
    return None


# ----------------------------------------------------------------------------------------------
# search


@dataclass
class _Search:
    cands: list[OrgLoad]
    targets: list[str]
    caps: dict[str, list[float]]  # target -> [bytes, orgs] remaining
    need_b: int
    need_n: int
    max_moves: int
    budget: int
    nodes: int = 0
    best: tuple | None = None  # (bytes, window, count)
    best_assign: list[tuple[int, str]] | None = None
    exhausted: bool = False

    def run(self, seed: list[tuple[int, str]] | None) -> None:
        if seed is not None:
            self._record(seed)
        n = len(self.cands)
        self.suffix_b = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            self.suffix_b[i] = self.suffix_b[i + 1] + self.cands[i].bytes
        # cands are sorted by bytes descending: the k smallest of cands[i:] are the last k.
        self.prefix_b = [0] * (n + 1)
        for i, c in enumerate(self.cands):
            self.prefix_b[i + 1] = self.prefix_b[i] + c.bytes
        self._dfs(0, 0, 0.0, [])

    def _record(self, assign: list[tuple[int, str]]) -> None:
        b = sum(self.cands[i].bytes for i, _ in assign)
        w = sum(self.cands[i].window_s for i, _ in assign)
        key = (b, round(w, 9), len(assign))
        if self.best is None or key < self.best:
            self.best = key
            self.best_assign = list(assign)

    def _dfs(self, i: int, b: int, w: float, assign: list[tuple[int, str]]) -> None:
        """Choose the next organization among cands[i:] (skipping one = moving on in the loop), so
        the recursion is only as deep as the number of organizations chosen."""
        k = len(assign)
        if b >= self.need_b and k >= self.need_n:
            self._record(assign)
            return
        if k >= self.max_moves:
            return
        n = len(self.cands)
        more = max(0, self.need_n - k)
        for j in range(i, n):
            self.nodes += 1
            if self.nodes > self.budget:
                self.exhausted = True
                return
            # Bounds: enough bytes and organizations left; the result cannot beat the best.
            if b + self.suffix_b[j] < self.need_b or k + (n - j) < self.need_n:
                return
            lower = max(b + (self.prefix_b[n] - self.prefix_b[n - more] if more else 0), self.need_b)
            if self.best is not None and (lower > self.best[0] or
                                          (b == self.best[0] and round(w, 9) >= self.best[1])):
                return
            org = self.cands[j]
            # Put it in each target where it fits (targets with identical room tried once), most room first.
            seen: set[tuple[float, float]] = set()
            for t in sorted(self.targets, key=lambda t: (-self.caps[t][0], -self.caps[t][1], t)):
                cap = self.caps[t]
                if cap[0] < org.bytes or cap[1] < 1 or (cap[0], cap[1]) in seen:
                    continue
                seen.add((cap[0], cap[1]))
                cap[0] -= org.bytes
                cap[1] -= 1
                assign.append((j, t))
                self._dfs(j + 1, b + org.bytes, w + org.window_s, assign)
                assign.pop()
                cap[0] += org.bytes
                cap[1] += 1
                if self.exhausted:
                    return


def _greedy(cands: list[OrgLoad], targets: list[str], caps: dict[str, list[float]], need_b: int, need_n: int,
            max_moves: int) -> tuple[list[tuple[int, str]], bool]:
    """A quick plan: finish with the smallest organization that completes the bytes, else take the
    largest that fits below what is missing. Returns (assignment, reached)."""
    caps = {t: list(c) for t, c in caps.items()}
    left = list(range(len(cands)))
    assign: list[tuple[int, str]] = []
    rem_b, rem_n = need_b, need_n

    def target_for(i: int) -> str | None:
        fits = [t for t in targets if caps[t][0] >= cands[i].bytes and caps[t][1] >= 1]
        return min(fits, key=lambda t: (-caps[t][0], -caps[t][1], t)) if fits else None

    while (rem_b > 0 or rem_n > 0) and len(assign) < max_moves:
        room = max((caps[t][0] for t in targets if caps[t][1] >= 1), default=-1)
        fitting = [i for i in left if cands[i].bytes <= room]
        if not fitting:
            break
        finishers = [i for i in fitting if cands[i].bytes >= rem_b and rem_n <= 1]
        if finishers:
            pick = min(finishers, key=lambda i: (cands[i].bytes, cands[i].window_s, cands[i].organization_id))
        elif rem_b > 0 and any(cands[i].bytes < rem_b for i in fitting):
            below = [i for i in fitting if cands[i].bytes < rem_b]
            pick = max(below, key=lambda i: (cands[i].bytes, -cands[i].window_s, -cands[i].organization_id))
        else:  # only organizations are missing: the smallest
            pick = min(fitting, key=lambda i: (cands[i].bytes, cands[i].window_s, cands[i].organization_id))
        t = target_for(pick)
        assert t is not None
        caps[t][0] -= cands[pick].bytes
        caps[t][1] -= 1
        assign.append((pick, t))
        left.remove(pick)
        rem_b -= cands[pick].bytes
        rem_n -= 1
    return assign, rem_b <= 0 and rem_n <= 0


def _solve(cands, targets, caps, need_b, need_n, max_moves, budget) -> tuple[list[tuple[int, str]] | None, bool]:
    """(assignment reaching the need with the fewest bytes, exhaustive); None when none was found."""
    if need_b <= 0 and need_n <= 0:
        return [], True
    seed, reached = _greedy(cands, targets, caps, need_b, need_n, max_moves)
    search = _Search(cands, targets, {t: list(c) for t, c in caps.items()}, need_b, need_n, max_moves, budget)
    search.run(seed if reached else None)
    return search.best_assign, not search.exhausted


# ----------------------------------------------------------------------------------------------
# the planner


def plan_cell(hot: str, cells: Sequence[CellLoad], orgs: Iterable[OrgLoad], *,
              in_flight: Iterable[InFlight] = (), max_moves: int = 20, max_window_s: float | None = None,
              node_budget: int = DEFAULT_NODE_BUDGET) -> Plan:
    """The plan that brings ``hot`` to its low-water mark (see the module docstring)."""
    in_flight = list(in_flight)
    max_moves = max(0, min(max_moves, MAX_MOVES))
    by_name = {c.name: c for c in cells}
    if hot not in by_name:
        return Plan(cell=hot, goal="none", reaches_low_water=False, exhaustive=True,
                    summary=f"no reading of cell {hot}: nothing planned")
    loads = projected(cells, in_flight)
    hot_cell = by_name[hot]
    th = hot_cell.thresholds
    low = {"bytes": th.low("bytes"), "orgs": th.low("orgs")}
    before = {"bytes": loads[hot][0], "orgs": loads[hot][1], "measured_bytes": hot_cell.bytes,
              "measured_orgs": hot_cell.orgs}

    # Candidates and skips.
    skipped: list[dict] = []
    cands: list[OrgLoad] = []
    for org in orgs:
        if org.cell != hot:
            continue
        why = eligibility(org, hot, max_window_s)
        if why:
            skipped.append({"organization_id": org.organization_id, "reason": why})
        else:
            cands.append(org)
    cands.sort(key=lambda o: (-o.bytes, o.window_s, o.organization_id))
    skipped.sort(key=lambda s: s["organization_id"])

    # Targets and their room.
    targets, caps, target_info = [], {}, []
    for c in sorted(cells, key=lambda c: c.name):
        if c.name == hot:
            continue
        cap = _capacity(loads[c.name], c.thresholds)
        info = {"cell": c.name, "bytes": loads[c.name][0], "orgs": loads[c.name][1],
                "room_bytes": None if cap[0] == INF else cap[0], "room_orgs": None if cap[1] == INF else cap[1],
                "high_water_bytes": c.thresholds.high_bytes, "high_water_orgs": c.thresholds.high_orgs}
        if not c.accepts:
            info["excluded"] = c.note or "does not accept organizations"
        elif cap[0] < 0 or cap[1] < 1:
            info["excluded"] = "at or above its high-water mark"
        else:
            targets.append(c.name)
            caps[c.name] = [cap[0], cap[1]]
        target_info.append(info)

    need_low = _need(loads[hot], th, "low")
    plan = Plan(cell=hot, goal="none", reaches_low_water=False, exhaustive=True, skipped=skipped,
                targets=target_info, before=before, low_water=low, considered=len(cands))
    if need_low == (0, 0):
        plan.reaches_low_water = True
        plan.after = dict(before)
        plan.summary = (f"{hot} is at {_load_text(loads[hot])}, at or below its low-water mark "
                        f"({_marks_text(low)}) counting moves under way: nothing to move")
        return _finish(plan, [], loads, by_name, hot)

    assign, exhaustive = _solve(cands, targets, caps, *need_low, max_moves, node_budget)
    goal = "low_water"
    if assign is None:
        need_high = _need(loads[hot], th, "high")
        if need_high != (0, 0) and need_high != need_low:
            assign, exhaustive2 = _solve(cands, targets, caps, *need_high, max_moves, node_budget)
            exhaustive = exhaustive and exhaustive2
            goal = "high_water"
        if assign is None:
            assign, _ = _greedy(cands, targets, caps, *need_low, max_moves)
            goal = "partial" if assign else "none"
    plan.goal = goal
    plan.exhaustive = exhaustive
    plan.reaches_low_water = goal == "low_water"
    return _finish(plan, [(cands[i], t) for i, t in assign], loads, by_name, hot, need_low=need_low)


def _finish(plan: Plan, chosen: list[tuple[OrgLoad, str]], loads, by_name, hot: str,
            need_low: tuple[int, int] = (0, 0)) -> Plan:
    room = {t["cell"]: [t["room_bytes"], t["room_orgs"]] for t in plan.targets}
    chosen.sort(key=lambda ot: (ot[0].window_s, ot[0].bytes, ot[0].organization_id))  # shortest windows first
    for org, target in chosen:
        rb, rn = room[target]
        room[target] = [None if rb is None else rb - org.bytes, None if rn is None else rn - 1]
        left = "no high-water mark" if rb is None else f"{human_bytes(rb - org.bytes)} left below its high water"
        plan.items.append(PlanItem(
            organization_id=org.organization_id, source=hot, target=target, bytes=org.bytes, rows=org.rows,
            window_s=round(org.window_s, 2),
            reason=(f"{human_bytes(org.bytes)}, {org.rows:,} rows, estimated write window {org.window_s:.1f} s; "
                    f"to {target}: {left}"),
        ))
    moved_b = sum(o.bytes for o, _ in chosen)
    after = (loads[hot][0] - moved_b, loads[hot][1] - len(chosen))
    plan.after = {"bytes": after[0], "orgs": after[1]}
    for t in plan.targets:
        add = [o for o, tgt in chosen if tgt == t["cell"]]
        t["after_bytes"] = t["bytes"] + sum(o.bytes for o in add)
        t["after_orgs"] = t["orgs"] + len(add)
        t["receives"] = len(add)
    if plan.goal == "none" and need_low != (0, 0):
        plan.summary = (f"{hot} is at {_load_text(loads[hot])}, above its low-water mark "
                        f"({_marks_text(plan.low_water)}), but no organization can move: " + _why_none(plan))
    elif chosen:
        verdict = {"low_water": "at or below its low-water mark",
                   "high_water": "at or below its high-water mark (the low-water mark cannot be reached)",
                   "partial": "lower, though not below its marks (no plan reaches them)"}[plan.goal]
        plan.summary = (f"{hot} is at {_load_text(loads[hot])} (low water {_marks_text(plan.low_water)}): moving "
                        f"{len(chosen)} organization(s), {human_bytes(moved_b)}, brings it to "
                        f"{_load_text(after)}, {verdict}" + ("" if plan.exhaustive else
                                                            "; search stopped at its budget (may not be optimal)"))
    return plan


def _why_none(plan: Plan) -> str:
    if not plan.considered:
        return "every organization of the cell is pinned, moving or cooling down" if plan.skipped \
            else "the cell has no organization"
    if not any("excluded" not in t for t in plan.targets):
        return "no target cell has room below its high-water mark"
    return "no organization fits in any target below its high-water mark"


def _load_text(load: tuple[int, int]) -> str:
    return f"{human_bytes(load[0])} / {load[1]} organization(s)"


def _marks_text(low: dict) -> str:
    parts = []
    if low.get("bytes") is not None:
        parts.append(human_bytes(low["bytes"]))
    if low.get("orgs") is not None:
        parts.append(f"{low['orgs']} organization(s)")
    return " / ".join(parts) or "none set"


def is_hot(cell: CellLoad) -> bool:
    """Above a high-water mark (measured, not projected)."""
    t = cell.thresholds
    return (t.high_bytes is not None and cell.bytes > t.high_bytes) or \
        (t.high_orgs is not None and cell.orgs > t.high_orgs)
