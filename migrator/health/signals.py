"""What a health indicator answers: normal, slow down or stop, with the reading behind it.

Pure logic (no database): the indicators in ``migrator/health/indicators.py`` measure, this module
turns a measurement and its two limits into a signal, and several readings into one verdict
(the worst signal wins; docs/adr/0019-health-indicators.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class Signal(enum.IntEnum):
    NORMAL = 0
    SLOW_DOWN = 1
    STOP = 2

    @property
    def label(self) -> str:
        return {Signal.NORMAL: "normal", Signal.SLOW_DOWN: "slow down", Signal.STOP: "stop"}[self]


@dataclass(frozen=True)
class Reading:
    """One indicator's answer for one cell. ``value`` and ``limit`` are in ``unit``; ``limit`` is the
    limit that was crossed (None when normal)."""

    cell: str
    indicator: str
    signal: Signal
    value: float | None = None
    limit: float | None = None
    unit: str = ""
    detail: str = ""
    slow: float | None = None  # the configured limits (None: not checked)
    stop: float | None = None

    @property
    def reason(self) -> str:
        """``replication lag 12 s on cell-1 (limit 5 s)``."""
        what = self.indicator.replace("_", " ")
        text = f"{what} {_fmt(self.value, self.unit)}" if self.value is not None else what
        text += f" on {self.cell}"
        if self.detail:
            text += f" ({self.detail})"
        if self.limit is not None:
            text += f" (limit {_fmt(self.limit, self.unit)})"
        return text

    def as_dict(self) -> dict:
        return {"cell": self.cell, "indicator": self.indicator, "signal": self.signal.label, "value": self.value,
                "limit": self.limit, "unit": self.unit, "detail": self.detail, "slow": self.slow, "stop": self.stop,
                "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    """All readings of the cells a unit touches; ``signal`` is the worst of them."""

    readings: tuple[Reading, ...] = field(default_factory=tuple)

    @property
    def signal(self) -> Signal:
        return max((r.signal for r in self.readings), default=Signal.NORMAL)

    @property
    def worst(self) -> Reading | None:
        bad = [r for r in self.readings if r.signal is self.signal and r.signal is not Signal.NORMAL]
        return bad[0] if bad else None

    @property
    def reason(self) -> str:
        return "; ".join(r.reason for r in self.readings if r.signal is self.signal and r.signal is not Signal.NORMAL)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit == "fraction":
        return f"{value:.0%}"
    text = f"{value:g}" if float(value).is_integer() else f"{value:.3g}" if value < 10 else f"{value:.0f}"
    return f"{text} {unit}".rstrip()


def classify(value: float | None, slow: float | None, stop: float | None) -> tuple[Signal, float | None]:
    """The signal of ``value`` against its limits (either may be None: not checked), and the limit it
    crossed. A value of None (not measurable) is normal."""
    if value is None:
        return Signal.NORMAL, None
    if stop is not None and value >= stop:
        return Signal.STOP, stop
    if slow is not None and value >= slow:
        return Signal.SLOW_DOWN, slow
    return Signal.NORMAL, None


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile (nearest rank); for fewer than 100 samples that is the slowest one."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def merge(readings: Iterable[Reading]) -> Verdict:
    return Verdict(tuple(readings))
