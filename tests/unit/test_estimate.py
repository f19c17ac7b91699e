"""A move's estimates: its duration and its write window, per strategy."""

from __future__ import annotations

import pytest

from migrator.config import load_settings
from migrator.moves.estimate import estimate


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "migrator.yaml"
    path.write_text("control_dsn: postgresql://m@127.0.0.1/control\n")
    return load_settings(path)


def test_frozen_window_is_the_whole_move_and_online_window_does_not_grow(settings):
    frozen = [estimate(settings, "frozen", rows, 10**6) for rows in (10_000, 1_000_000)]
    online = [estimate(settings, "online", rows, 10**6) for rows in (10_000, 1_000_000)]
    assert all(e["strategy"] == "frozen" and e["write_window_estimate_s"] == e["estimate_s"] for e in frozen)
    # Copied and verified inside the window: 2 x 990,000 more rows at moves.est_rows_per_s.
    grown = 2 * 990_000 / settings.moves.est_rows_per_s
    assert frozen[1]["write_window_estimate_s"] - frozen[0]["write_window_estimate_s"] == pytest.approx(grown, abs=0.1)
    assert all(e["strategy"] == "online" for e in online)
    assert online[0]["write_window_estimate_s"] == online[1]["write_window_estimate_s"] < 5
    assert online[1]["estimate_s"] >= frozen[1]["estimate_s"]
    assert estimate(settings, None, 10_000, 0)["strategy"] == settings.moves.default_strategy
