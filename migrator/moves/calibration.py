"""What moves measured, and the estimate's calibration from it.

- :func:`record` (called when ``verify`` finishes): per table, the rows (or blobs) and bytes copied and
  the table's share of the ``copy_rows`` / ``copy_blobs`` and ``verify`` steps' wall time, into
  ``move_throughput``. A step's wall time (its first claim to its fan-in, as ``report.copy_rows.seconds``
  already says) is shared out by the seconds its units spent on each table (``move_units.result.seconds``),
  so the parts add up to the step even when several workers copied at once.
- :func:`calibrate` (pure): per table rows/s for copy and verify, the fleet-wide rates, blob bytes/s
  (each the median of the moves' rates weighted by their rows), and per strategy the rest of a move
  (its duration minus copy and verify) and its write window, each fitted as ``a + b x rows`` (repeated medians).
- :func:`load_calibration`: reads the last ``moves.calibration_moves`` completed moves of the last
  ``moves.calibration_days`` days made in one attempt and never throttled (their duration and window
  from ``moves``) and calibrates.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from migrator.control.engine import session_factory
from migrator.control.models import Move, MoveEvent, MoveThroughput
from migrator.moves import window
from migrator.moves.estimate import Calibration, Line

log = logging.getLogger(__name__)

# A table gets a rate of its own once recent moves copied at least this many of its rows; below, the
# per-table start-up costs dominate its time and the fleet-wide rate is the better guess.
MIN_TABLE_ROWS = 5_000
BLOB_PREFIX = "blobs:"  # verify's units of blob columns (migrator/moves/steps/verify.py)


# ----------------------------------------------------------------------------- measuring
def _share(step_s: float | None, busy: dict[str, float], weight: dict[str, float]) -> dict[str, float]:
    """``step_s`` shared out by each key's busy seconds (by ``weight`` when no unit timed itself)."""
    if not step_s:
        return {k: 0.0 for k in weight}
    by = busy if sum(busy.values()) > 0 else weight
    total = sum(by.values())
    if total <= 0:
        return {k: step_s / len(by) for k in by} if by else {}
    return {k: step_s * v / total for k, v in by.items()}


def measure(units: Iterable, copy_rows_s: float | None, copy_blobs_s: float | None,
            verify_s: float | None) -> list[dict]:
    """The rows of ``move_throughput`` for one move (pure): ``units`` are its ``move_units`` of copy_rows,
    copy_blobs and verify; the seconds are each step's wall time."""
    acc: dict[tuple[str, str], dict] = {}
    busy: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    weight: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for u in units:
        seconds = float((u.result or {}).get("seconds") or 0.0)
        if u.step == "copy_rows":
            key = ("rows", u.table_name)
        elif u.step == "copy_blobs":
            key = ("blobs", u.table_name)
        elif u.step == "verify":
            key = ("blobs" if u.unit.startswith(BLOB_PREFIX) else "rows", u.table_name)
        else:
            continue
        row = acc.setdefault(key, {"rows": 0, "bytes": 0})
        if u.step in ("copy_rows", "copy_blobs"):
            row["rows"] += int(u.done or 0)
            row["bytes"] += int(u.bytes_done or 0)
        step = "copy" if u.step in ("copy_rows", "copy_blobs") else "verify"
        group = f"{step}:{key[0]}"
        busy[group][key] += seconds
        weight[group][key] += max(int(u.total or 0), 1)
    copy = {**_share(copy_rows_s, busy["copy:rows"], weight["copy:rows"]),
            **_share(copy_blobs_s, busy["copy:blobs"], weight["copy:blobs"])}
    # verify's row and blob units share one step: share its time over all of them.
    v_busy = {**busy["verify:rows"], **busy["verify:blobs"]}
    v_weight = {**weight["verify:rows"], **weight["verify:blobs"]}
    ver = _share(verify_s, v_busy, v_weight)
    return [{"kind": kind, "table_name": table, "rows": row["rows"], "bytes": row["bytes"],
             "copy_s": round(copy.get((kind, table), 0.0), 4),
             "verify_s": round(ver[(kind, table)], 4) if (kind, table) in ver else None}
            for (kind, table), row in sorted(acc.items())]


def step_seconds(store, move) -> float | None:
    """The current step's wall time so far: from its first claim (``moves.step_started_at``) to now."""
    if move.step_started_at is None:
        return None
    return round((store.now() - move.step_started_at).total_seconds(), 3)


def record(ctx, verify_s: float | None) -> int:
    """Write what this move measured into ``move_throughput`` (again: replaced). Called by verify's fan-in;
    a failure here is logged, never fails the move. Returns the rows written."""
    try:
        move = ctx.store.get(ctx.move.id)
        report = move.report or {}
        units = ctx.store.units(move.id)
        rows = measure(units, (report.get("copy_rows") or {}).get("seconds"),
                       (report.get("copy_blobs") or {}).get("seconds"), verify_s)
        if not rows:
            return 0
        values = [{"move_id": move.id, "strategy": move.strategy, "source_cell": move.source_cell,
                   "target_cell": move.target_cell, **r} for r in rows]
        stmt = pg_insert(MoveThroughput).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[MoveThroughput.move_id, MoveThroughput.kind, MoveThroughput.table_name],
            set_={c: stmt.excluded[c] for c in ("rows", "bytes", "copy_s", "verify_s", "finished_at")})
        with ctx.store.Session() as s:
            s.execute(stmt)
            s.commit()
        return len(values)
    except Exception:  # noqa: BLE001 - a measurement must never fail the move it measured
        log.warning("move %s: could not record its throughput for the estimate", ctx.move_id, exc_info=True)
        return 0


# ----------------------------------------------------------------------------- calibrating
@dataclass
class MoveSample:
    """One completed move as the calibration sees it."""

    strategy: str
    duration_s: float
    window_s: float | None
    throughput: list[dict] = field(default_factory=list)  # rows of move_throughput

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.throughput if t["kind"] == "rows")

    @property
    def data_s(self) -> float:
        """Seconds of copy and verification (rows and blobs)."""
        return sum(t["copy_s"] + (t["verify_s"] or 0.0) for t in self.throughput)


def weighted_median(pairs: list[tuple[float, float]]) -> float | None:
    """The median of ``(value, weight)`` pairs: the value at half the total weight (between two values
    that split it exactly, their mean)."""
    pairs = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    acc = 0.0
    for i, (v, w) in enumerate(pairs):
        acc += w
        if acc > total / 2:
            return v
        if acc == total / 2:
            return (v + pairs[i + 1][0]) / 2 if i + 1 < len(pairs) else v
    return pairs[-1][0]


def _median(values: list[float]) -> float:
    return weighted_median([(v, 1.0) for v in values])


def fit(points: list[tuple[float, float]]) -> Line | None:
    """``y = a + b x`` with a >= 0 and b >= 0, robust to a move that ran on a busy machine (Siegel's repeated
    median: for each point the median slope to the others, the median of those, then the median
    intercept); one point or one x: the median."""
    if not points:
        return None
    n = len(points)
    slopes = [_median(each) for each in (
        [(y2 - y1) / (x2 - x1) for j, (x2, y2) in enumerate(points) if j != i and x2 != x1]
        for i, (x1, y1) in enumerate(points)) if each]
    if not slopes:
        return Line(max(_median([y for _, y in points]), 0.0), 0.0, n)
    b = _median(slopes)
    if b <= 0:  # slower when smaller: noise, not a negative cost per row
        return Line(max(_median([y for _, y in points]), 0.0), 0.0, n)
    a = _median([y - b * x for x, y in points])
    if a < 0:  # through the origin instead
        ratios = [y / x for x, y in points if x > 0]
        return Line(0.0, max(_median(ratios), 0.0) if ratios else 0.0, n)
    return Line(a, b, n)


def calibrate(samples: list[MoveSample], days: float | None = None) -> Calibration:
    """The calibration from recent moves (pure; no samples: an empty Calibration, the config's rates).

    Each rate is the median of the moves' rates weighted by their rows: big moves count most (their rate
    is the least disturbed by start-up costs), and one move slowed by a busy machine does not drag the
    rate with it once there are three."""
    if not samples:
        return Calibration(days=days)
    copy_rates: dict[str, list[tuple[float, float]]] = defaultdict(list)  # table -> (rows/s, rows) per move
    verify_rates: dict[str, list[tuple[float, float]]] = defaultdict(list)
    measured: dict[str, int] = defaultdict(int)
    fleet_copy, fleet_verify, blob_rates = [], [], []
    for s in samples:
        rows_c = copy_s = rows_v = verify_s = 0.0
        blob_bytes = blob_s = 0.0
        for t in s.throughput:
            if t["kind"] == "blobs":
                if t["bytes"]:
                    blob_bytes += t["bytes"]
                    blob_s += t["copy_s"] + (t["verify_s"] or 0.0)
                continue
            if t["rows"] <= 0:
                continue
            measured[t["table_name"]] += t["rows"]
            if t["copy_s"] > 0:
                copy_rates[t["table_name"]].append((t["rows"] / t["copy_s"], t["rows"]))
                rows_c, copy_s = rows_c + t["rows"], copy_s + t["copy_s"]
            if t["verify_s"]:
                verify_rates[t["table_name"]].append((t["rows"] / t["verify_s"], t["rows"]))
                rows_v, verify_s = rows_v + t["rows"], verify_s + t["verify_s"]
        if copy_s > 0:
            fleet_copy.append((rows_c / copy_s, rows_c))
        if verify_s > 0:
            fleet_verify.append((rows_v / verify_s, rows_v))
        if blob_bytes and blob_s > 0:
            blob_rates.append((blob_bytes / blob_s, blob_bytes))
    copy = {name: weighted_median(r) for name, r in copy_rates.items() if measured[name] >= MIN_TABLE_ROWS}
    verify = {name: weighted_median(r) for name, r in verify_rates.items() if measured[name] >= MIN_TABLE_ROWS}
    rest, win = {}, {}
    for strategy in sorted({s.strategy for s in samples}):
        mine = [s for s in samples if s.strategy == strategy]
        rest[strategy] = fit([(s.rows, max(s.duration_s - s.data_s, 0.0)) for s in mine])
        if strategy == "frozen":  # the copy and verification are inside its window: the rest of it
            points = [(s.rows, max(s.window_s - s.data_s, 0.0)) for s in mine if s.window_s is not None]
        else:
            points = [(s.rows, s.window_s) for s in mine if s.window_s is not None]
        if points:
            win[strategy] = fit(points)
    return Calibration(
        moves=len(samples), copy_rows_per_s=copy, verify_rows_per_s=verify,
        fleet_copy_rows_per_s=weighted_median(fleet_copy), fleet_verify_rows_per_s=weighted_median(fleet_verify),
        blob_bytes_per_s=weighted_median(blob_rates),
        rest={k: v for k, v in rest.items() if v is not None}, window=win, days=days)


def load_samples(control_dsn: str, *, limit: int, days: float, now: dt.datetime | None = None) -> list[MoveSample]:
    """The last ``limit`` completed moves of the last ``days`` days that recorded their throughput, in one
    attempt and never throttled: a move paused, failed and resumed, taken over, or held back by a cell's
    health (docs/adr/0019-health-indicators.md) counts the time it waited."""
    if limit <= 0:
        return []
    Session = session_factory(control_dsn)  # noqa: N806
    with Session() as s:
        since = (now if now is not None else s.scalar(select(func.now()))) - dt.timedelta(days=days)
        measured = select(MoveThroughput.move_id).distinct()
        throttled = select(MoveEvent.move_id).where(MoveEvent.event == "throttled").distinct()
        q = (select(Move).where(Move.completed_at.is_not(None), Move.completed_at > since, Move.attempt == 1,
                                Move.id.in_(measured), Move.id.not_in(throttled))
             .order_by(Move.completed_at.desc()).limit(limit))
        moves = list(s.scalars(q))
        if not moves:
            return []
        rows = list(s.scalars(select(MoveThroughput).where(MoveThroughput.move_id.in_([m.id for m in moves]))))
    by_move: dict = defaultdict(list)
    for r in rows:
        by_move[r.move_id].append({"kind": r.kind, "table_name": r.table_name, "rows": int(r.rows),
                                   "bytes": r.bytes, "copy_s": float(r.copy_s),
                                   "verify_s": None if r.verify_s is None else float(r.verify_s)})
    return [MoveSample(strategy=m.strategy, duration_s=(m.completed_at - m.created_at).total_seconds(),
                       window_s=window.seconds(m), throughput=by_move[m.id]) for m in moves]


def load_calibration(settings, now: dt.datetime | None = None) -> Calibration:
    """The calibration from the control database (``moves.calibration_moves`` / ``calibration_days``)."""
    m = settings.moves
    return calibrate(load_samples(settings.control_dsn, limit=m.calibration_moves, days=m.calibration_days, now=now),
                     days=m.calibration_days)


def try_load_calibration(settings) -> Calibration | None:
    """As :func:`load_calibration`, None (the config's rates) when the control database cannot say."""
    try:
        return load_calibration(settings)
    except Exception:  # noqa: BLE001 - an estimate is never worth failing a preflight for
        log.warning("could not read recent moves' throughput; estimating from config defaults", exc_info=True)
        return None
