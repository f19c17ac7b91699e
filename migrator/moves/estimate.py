"""How long a move will take, and how long its organization will not be able to write.

One estimate for preflight's plan (``migrator move --dry-run``, ``status MOVE``) and the rebalancer's
guardrail. A pure function of the settings, the strategy, the organization's rows per table and blob
bytes, and a :class:`~migrator.moves.calibration.Calibration` (what recent moves measured, read from the
control database by ``migrator/moves/calibration.py``; None or empty: the config's rates).

Each table's rows are copied and verified at the rate recent moves measured *for that table*, else at
the rate measured over all tables, else at ``moves.est_rows_per_s``; blobs at the measured bytes/s, else
``moves.est_blob_bytes_per_s``. Everything else a move does (preflight, the steps' bookkeeping, the
verification after the flip; online: capture and catch-up) is the measured *rest* of recent moves of the
strategy (their duration minus copy and verify), fitted as ``a + b x rows``; else fixed costs.

- **frozen**: the organization is read-only from the freeze to the unfreeze, that is about the whole
  copy of rows and blobs and their verification, plus the window's own steps (freeze, drain, flip).
- **online**: the bulk is copied and verified while the organization writes; the window is the freeze,
  the drain, the final delta (catch-up stops once it is at most ``online.max_delta_keys`` keys and
  ``online.max_delta_s`` seconds), the verification of the keys it changed, and the flip: small, and
  not proportional to the organization's rows. Calibrated: the windows recent online moves had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from migrator.config import Settings

# Seconds of fixed cost per move: the steps' bookkeeping, enqueueing and workers picking them up.
FIXED_S = 2.0
# Seconds of fixed cost inside an online move's window: freeze (route and guard), drain, flip, unfreeze.
ONLINE_WINDOW_FIXED_S = 1.0


@dataclass(frozen=True)
class Line:
    """``seconds = fixed_s + per_row_s x rows``, fitted on ``moves`` recent moves."""

    fixed_s: float
    per_row_s: float = 0.0
    moves: int = 0

    def at(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows


@dataclass(frozen=True)
class Calibration:
    """What recent moves measured (built by ``migrator.moves.calibration.calibrate``, a pure function).

    ``copy_rows_per_s`` / ``verify_rows_per_s``: per table; ``fleet_*``: over every table (None: none
    measured); ``rest``: per strategy, the move's duration minus its copy and verification; ``window``: per
    strategy, the write window (frozen: minus the copy and verification inside it).
    """

    moves: int = 0
    copy_rows_per_s: Mapping[str, float] = field(default_factory=dict)
    verify_rows_per_s: Mapping[str, float] = field(default_factory=dict)
    fleet_copy_rows_per_s: float | None = None
    fleet_verify_rows_per_s: float | None = None
    blob_bytes_per_s: float | None = None
    rest: Mapping[str, Line] = field(default_factory=dict)
    window: Mapping[str, Line] = field(default_factory=dict)
    days: float | None = None  # the period looked at

    def __bool__(self) -> bool:
        return self.moves > 0


def _rows_s(tables: Mapping[str, int], per_table: Mapping[str, float], fleet: float | None,
            default: float) -> tuple[float, dict[str, str]]:
    """Seconds to go through every table's rows, and where each table's rate came from."""
    seconds, source = 0.0, {}
    for name, rows in tables.items():
        if name in per_table:
            rate, source[name] = per_table[name], "table"
        elif fleet:
            rate, source[name] = fleet, "fleet"
        else:
            rate, source[name] = default, "config"
        seconds += rows / rate
    return seconds, source


def basis(calibration: Calibration | None) -> str:
    """What an operator reads after the estimate: where its rates came from."""
    if not calibration:
        return "from config defaults (no recent moves measured)"
    n = calibration.moves
    return f"calibrated from {n} recent move{'s' if n != 1 else ''}"


def estimate(settings: Settings, strategy: str | None, rows: int | Mapping[str, int], blob_bytes: int,
             calibration: Calibration | None = None) -> dict:
    """``{"strategy", "estimate_s", "write_window_estimate_s", "calibration"}`` for a move of ``rows``
    rows (per table, or a total) and ``blob_bytes`` bytes of blobs; ``strategy`` None means
    ``moves.default_strategy``; ``calibration`` None or empty: the config's rates and fixed costs."""
    m = settings.moves
    strategy = strategy or m.default_strategy
    cal = calibration or Calibration()
    tables = dict(rows) if isinstance(rows, Mapping) else {"": int(rows)}
    total = sum(tables.values())
    copy_s, sources = _rows_s(tables, cal.copy_rows_per_s, cal.fleet_copy_rows_per_s, m.est_rows_per_s)
    verify_s, _ = _rows_s(tables, cal.verify_rows_per_s, cal.fleet_verify_rows_per_s, m.est_rows_per_s)
    blobs_s = blob_bytes / (cal.blob_bytes_per_s or m.est_blob_bytes_per_s)
    data_s = copy_s + verify_s + blobs_s
    online = settings.online
    rest, win = cal.rest.get(strategy), cal.window.get(strategy)
    if strategy == "frozen":
        window = data_s + (win.at(total) if win else 0.0)
        duration = data_s + (rest.at(total) if rest else FIXED_S)
        if not rest:
            window = duration
    else:
        if win:
            window = win.at(total)
        else:
            last_keys = min(total, online.max_delta_keys)
            # The final delta (applied, then its keys verified) and the fixed steps of the window.
            window = online.max_delta_s + last_keys / m.est_rows_per_s * 2 + ONLINE_WINDOW_FIXED_S
        if rest:
            duration = data_s + rest.at(total)
        else:
            # Capture, the catch-up rounds and the window come on top of the bulk copy and verification.
            duration = data_s + FIXED_S + online.max_delta_s + window
    counted = {s: sum(1 for v in sources.values() if v == s) for s in ("table", "fleet", "config")}
    return {
        "strategy": strategy,
        "estimate_s": round(duration, 1),
        "write_window_estimate_s": round(min(window, duration), 1),
        "calibration": {
            "basis": basis(calibration),
            "moves": cal.moves,
            "days": cal.days,
            # How many tables were estimated at their own measured rate, the fleet's, or the config's.
            "tables": counted if isinstance(rows, Mapping) else None,
            "fixed_costs": "measured" if rest else "config",
        },
    }
