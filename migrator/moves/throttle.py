"""Moves throttle on their cells' health (docs/adr/0019-health-indicators.md).

Units of ``copy_rows``, ``copy_blobs`` and ``verify``, the ``catch_up`` rounds and ``cleanup``'s
batches ask :func:`check` before they start and :class:`Pacer` after every batch:

- **stop**: the unit does not start (or stops after the batch it checkpointed) and is re-enqueued
  after ``health.pause_s``, so it holds no worker slot while it waits; the move's ``throttle``
  column says why, and its heartbeat stays fresh, so the reconciler leaves it alone.
- **slow down**: batches shrink by ``health.slow_batch_factor``, their COPY stream runs at most
  ``health.slow_rate_fraction`` of the unit's full-speed bytes/s, and the unit rests
  ``health.slow_rest_fraction`` of each batch's time after it.
- **normal**: full speed; the recorded throttle is cleared (one history event when it lifts).

Nothing inside the write window is throttled: a frozen move's copy is inside it, and so is an
online move's final delta; their steps never consult this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from migrator.config import Settings
from migrator.errors import MigratorError
from migrator.health.indicators import read_cell
from migrator.health.signals import Reading, Signal, Verdict, merge
from migrator.moves import window
from migrator.observability import metrics

log = logging.getLogger(__name__)

# The steps whose work obeys the health signals (always outside the write window for the online
# strategy; the frozen strategy's copy is inside it and is never throttled).
THROTTLED_STEPS = frozenset({"copy_rows", "copy_blobs", "verify", "verify_catch_up", "catch_up", "cleanup"})


class Throttled(MigratorError):
    """A unit stopped on a health signal; it is re-enqueued after ``pause_s`` (not a failure)."""

    def __init__(self, verdict: Verdict, pause_s: float):
        super().__init__(f"throttled: {verdict.reason}", f"it continues by itself after the signal clears "
                                                          f"(checked every {pause_s:g} s)")
        self.verdict = verdict
        self.pause_s = pause_s


_cache: dict[tuple, tuple[float, list[Reading]]] = {}
_cache_lock = threading.Lock()


def applies(settings: Settings, strategy: str, step: str) -> bool:
    """Whether ``step`` of a move with ``strategy`` obeys the health signals."""
    if not settings.health.enabled or step not in THROTTLED_STEPS:
        return False
    return step == "cleanup" or not window.inside(strategy, step)


def read(settings: Settings, cells: Sequence[str], tables: Sequence[str] = ()) -> Verdict:
    """The readings of ``cells`` (reused for ``health.check_every_s`` in this process)."""
    readings: list[Reading] = []
    for cell in dict.fromkeys(cells):
        key = (cell, tuple(sorted(tables)))
        now = time.monotonic()
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None and now - hit[0] < settings.health.check_every_s:
            readings += hit[1]
            continue
        cfg = settings.cell(cell)
        fresh = read_cell(cfg.dsn, cell, settings.health.limits(cell), tables=tables, standbys=cfg.standbys,
                          timeout_s=settings.health.connect_timeout_s)
        with _cache_lock:
            _cache[key] = (now, fresh)
        for r in fresh:
            metrics.health_signal.labels(cell, r.indicator).set(int(r.signal))
        readings += fresh
    return merge(readings)


def forget() -> None:
    """Drop the cached readings (tests, and a worker told that a cell changed)."""
    with _cache_lock:
        _cache.clear()


def _cells(move, step: str) -> list[str]:
    # cleanup deletes in the source; everything else reads one cell and writes the other.
    return [move.source_cell] if step == "cleanup" else [move.source_cell, move.target_cell]


def _about_other_tables(held: dict, tables: Sequence[str]) -> bool:
    return held.get("indicator") == "autovacuum" and sorted(held.get("tables") or []) != sorted(tables)


def record(store, move, token: str, step: str, verdict: Verdict, *, unit: str | None = None,
           tables: Sequence[str] = ()) -> None:
    """Keep the move's ``throttle`` column (and its history) in step with ``verdict``."""
    worst = verdict.worst
    if worst is None:
        # An autovacuum reading is about its unit's tables: a unit on other tables reading normal does not
        # lift it (concurrent units would otherwise flip the move's throttle, and its history, every batch).
        lifted = store.clear_throttle(move.id, token, keep=lambda held: _about_other_tables(held, tables))
        if lifted is not None:
            store.event(move.id, step, "throttle_lifted", f"no longer throttled: {lifted.get('reason', '?')}",
                        {"throttle": lifted})
        return
    metrics.throttled.labels(worst.cell, worst.indicator, worst.signal.label).inc()
    data = {**worst.as_dict(), "step": step, "unit": unit, "tables": sorted(tables)}
    if store.set_throttle(move.id, token, data):
        what = "paused" if worst.signal is Signal.STOP else "slowed down"
        store.event(move.id, step, "throttled", f"{what}: {verdict.reason}", {"throttle": data})
        log.info("move %s %s: %s: %s", move.id, step, what, verdict.reason)


def check(settings: Settings, store, move, token: str, step: str, *, tables: Sequence[str] = (),
          unit: str | None = None) -> Verdict:
    """The verdict for one unit (or round) of ``step`` before it starts; records it on the move.
    NORMAL when the step does not obey the signals."""
    if not applies(settings, move.strategy, step):
        return Verdict()
    verdict = read(settings, _cells(move, step), tables)
    record(store, move, token, step, verdict, unit=unit, tables=tables)
    return verdict


class Pacer:
    """Between the batches of one unit: rests on "slow down", raises :class:`Throttled` on "stop"
    (after the batch was checkpointed, so the unit resumes where it stopped), and learns the rate that
    sizes the batches of the next units (``health.target_batch_s``)."""

    def __init__(self, settings: Settings, store, move, token: str, step: str, tables: Sequence[str] = (),
                 unit: str | None = None):
        self.settings, self.store, self.move, self.token = settings, store, move, token
        self.step, self.tables, self.unit = step, tuple(tables), unit
        self.active = applies(settings, move.strategy, step)
        self.verdict = Verdict()
        self._since = time.monotonic()
        self._streamed = 0  # bytes of the current batch's COPY stream so far

    def start(self) -> Verdict:
        """The check before the unit starts: raises :class:`Throttled` on stop."""
        if not self.active:
            return self.verdict
        self.verdict = check(self.settings, self.store, self.move, self.token, self.step, tables=self.tables,
                             unit=self.unit)
        if self.verdict.signal is Signal.STOP:
            raise Throttled(self.verdict, self.settings.health.pause_s)
        self._since = time.monotonic()
        return self.verdict

    def batch_rows(self, configured: int) -> int:
        """Rows per batch for this unit: smaller on "slow down", and toward ``health.target_batch_s``
        at the rate this process measured for the table."""
        if not self.active:
            return configured
        h = self.settings.health
        floor = max(1, int(configured * h.slow_batch_factor))
        rows = configured
        if h.target_batch_s is not None:
            rate = _rates.get((str(self.move.id), self.tables))
            if rate:
                rows = max(floor, min(configured, int(rate * h.target_batch_s)))
        if self.verdict.signal is Signal.SLOW_DOWN:
            rows = min(rows, floor)
        return rows

    def on_chunk(self, nbytes: int) -> None:
        """Inside a batch's COPY stream: on "slow down", sleep so that the stream runs at most
        ``health.slow_rate_fraction`` of the unit's full-speed bytes/s."""
        self._streamed += nbytes
        full = _full_rates.get((str(self.move.id), self.tables))
        if self.verdict.signal is not Signal.SLOW_DOWN or not full:
            return
        allowed = full * self.settings.health.slow_rate_fraction
        ahead = self._streamed / allowed - (time.monotonic() - self._since)
        if ahead > 0.005:
            time.sleep(min(ahead, 1.0))

    def after_batch(self, rows: int = 0, nbytes: int = 0) -> None:
        """Call after each checkpointed batch."""
        if not self.active:
            return
        elapsed = time.monotonic() - self._since
        if rows and elapsed > 0:
            _rates[(str(self.move.id), self.tables)] = rows / elapsed
        if nbytes and elapsed > 0 and self.verdict.signal is Signal.NORMAL:
            _full_rates[(str(self.move.id), self.tables)] = nbytes / elapsed
        self._streamed = 0
        self.verdict = check(self.settings, self.store, self.move, self.token, self.step, tables=self.tables,
                             unit=self.unit)
        if self.verdict.signal is Signal.STOP:
            raise Throttled(self.verdict, self.settings.health.pause_s)
        if self.verdict.signal is Signal.SLOW_DOWN and self.settings.health.slow_rest_fraction:
            time.sleep(min(elapsed * self.settings.health.slow_rest_fraction, self.settings.health.pause_s))
        self._since = time.monotonic()


# Rows per second of the last batch of each (move, tables) in this process: sizes the next batches.
_rates: dict[tuple, float] = {}
# Bytes per second of the last full-speed batch of each (move, tables) in this process: what a slowed
# down COPY stream is held to a fraction of.
_full_rates: dict[tuple, float] = {}
