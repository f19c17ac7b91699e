"""How long a move will take, and how long its organization will not be able to write.

One estimate for preflight's plan (``migrator move --dry-run``, ``status MOVE``) and the rebalancer's
guardrail. The rates are ``moves.est_rows_per_s`` and ``moves.est_blob_bytes_per_s``.

- **frozen**: the organization is read-only from the freeze to the unfreeze, that is about the whole
  copy of rows and blobs and their verification.
- **online**: the bulk is copied and verified while the organization writes; the window is the freeze,
  the drain, the final delta (catch-up stops once it is at most ``online.max_delta_keys`` keys and
  ``online.max_delta_s`` seconds), the verification of the keys it changed, and the flip: small, and
  not proportional to the organization's rows.
"""

from __future__ import annotations

from migrator.config import Settings

# Seconds of fixed cost per move: the steps' bookkeeping, enqueueing and workers picking them up.
FIXED_S = 2.0
# Seconds of fixed cost inside an online move's window: freeze (route and guard), drain, flip, unfreeze.
ONLINE_WINDOW_FIXED_S = 1.0


def estimate(settings: Settings, strategy: str | None, rows: int, blob_bytes: int) -> dict:
    """``{"strategy", "estimate_s", "write_window_estimate_s"}`` for a move of ``rows`` rows and
    ``blob_bytes`` bytes of blobs; ``strategy`` None means ``moves.default_strategy``."""
    m = settings.moves
    strategy = strategy or m.default_strategy
    copy_and_verify_s = rows / m.est_rows_per_s * 2 + blob_bytes / m.est_blob_bytes_per_s
    if strategy == "frozen":
        duration = window = copy_and_verify_s + FIXED_S
    else:
        online = settings.online
        last_keys = min(rows, online.max_delta_keys)
        # The final delta (applied, then its keys verified) and the fixed steps of the window.
        window = online.max_delta_s + last_keys / m.est_rows_per_s * 2 + ONLINE_WINDOW_FIXED_S
        # Capture, the catch-up rounds and the window come on top of the bulk copy and verification.
        duration = copy_and_verify_s + FIXED_S + online.max_delta_s + window
    return {"strategy": strategy, "estimate_s": round(duration, 1), "write_window_estimate_s": round(window, 1)}
