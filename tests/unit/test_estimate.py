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


# ----------------------------------------------------------------------------- calibrated
def _sample(strategy, rows, duration, window, copy_rate=200_000.0, verify_rate=400_000.0, blob_bytes=0):
    """A completed move of ``rows`` rows split 4:1 over issues and notes, at the given rates."""
    from migrator.moves.calibration import MoveSample

    tables = {"issues": rows * 4 // 5, "notes": rows // 5}
    throughput = [{"kind": "rows", "table_name": t, "rows": n, "bytes": n * 100, "copy_s": n / copy_rate,
                   "verify_s": n / verify_rate} for t, n in tables.items()]
    if blob_bytes:
        throughput.append({"kind": "blobs", "table_name": "uploads", "rows": 10, "bytes": blob_bytes,
                           "copy_s": blob_bytes / 50e6, "verify_s": 0.0})
    return MoveSample(strategy=strategy, duration_s=duration, window_s=window, throughput=throughput)


def test_config_defaults_say_so(settings):
    e = estimate(settings, "online", {"issues": 80_000, "notes": 20_000}, 0)
    assert e["calibration"]["basis"] == "from config defaults (no recent moves measured)"
    assert e["calibration"]["moves"] == 0 and e["calibration"]["fixed_costs"] == "config"
    assert e["calibration"]["tables"] == {"table": 0, "fleet": 0, "config": 2}
    # Per table or as a total: the same estimate from the config's rates.
    assert e["estimate_s"] == estimate(settings, "online", 100_000, 0)["estimate_s"]


def test_calibrated_rates_per_table_and_measured_rest(settings):
    from migrator.moves.calibration import calibrate

    # Two frozen moves: rest of the move 2 s + 1 s per 100k rows; window 0.5 s beyond copy and verify.
    samples = [_sample("frozen", rows, 2.0 + rows / 100_000 + rows * (1 / 200_000 + 1 / 400_000),
                       0.5 + rows * (1 / 200_000 + 1 / 400_000)) for rows in (50_000, 300_000)]
    cal = calibrate(samples, days=30)
    assert cal.moves == 2
    assert cal.copy_rows_per_s["issues"] == pytest.approx(200_000)
    assert cal.verify_rows_per_s["notes"] == pytest.approx(400_000)
    assert cal.rest["frozen"].fixed_s == pytest.approx(2.0) and cal.rest["frozen"].per_row_s == pytest.approx(1e-5)
    assert cal.window["frozen"].fixed_s == pytest.approx(0.5)

    rows = 600_000
    e = estimate(settings, "frozen", {"issues": 480_000, "notes": 120_000}, 0, cal)
    data = rows / 200_000 + rows / 400_000
    assert e["estimate_s"] == pytest.approx(2.0 + rows / 100_000 + data, abs=0.05)
    assert e["write_window_estimate_s"] == pytest.approx(0.5 + data, abs=0.05)
    assert e["calibration"]["basis"] == "calibrated from 2 recent moves"
    assert e["calibration"]["tables"] == {"table": 2, "fleet": 0, "config": 0}
    assert e["calibration"]["fixed_costs"] == "measured"
    # Not the config's guess: the config says 100,000 rows/s for copy and for verify.
    assert e["estimate_s"] != estimate(settings, "frozen", rows, 0)["estimate_s"]


def test_an_unmeasured_table_takes_the_fleet_rate_and_a_small_one_is_not_trusted(settings):
    from migrator.moves.calibration import MIN_TABLE_ROWS, calibrate

    small = _sample("online", 2 * MIN_TABLE_ROWS, 3.0, 1.0)
    cal = calibrate([small, _sample("online", 100_000, 5.0, 1.2)])
    assert set(cal.copy_rows_per_s) == {"issues", "notes"}
    e = estimate(settings, "online", {"issues": 1000, "merge_requests": 50_000}, 0, cal)
    assert e["calibration"]["tables"] == {"table": 1, "fleet": 1, "config": 0}
    only_small = calibrate([_sample("online", MIN_TABLE_ROWS, 3.0, 1.0)])
    assert "notes" not in only_small.copy_rows_per_s  # 1/5 of the rows: below MIN_TABLE_ROWS
    assert only_small.fleet_copy_rows_per_s == pytest.approx(200_000)


def test_online_window_is_the_measured_window_not_the_copy(settings):
    from migrator.moves.calibration import calibrate

    cal = calibrate([_sample("online", rows, 4.0 + rows / 100_000, 1.3) for rows in (10_000, 200_000)])
    small, big = (estimate(settings, "online", {"issues": r}, 0, cal) for r in (10_000, 1_000_000))
    assert small["write_window_estimate_s"] == big["write_window_estimate_s"] == pytest.approx(1.3, abs=0.05)
    assert big["estimate_s"] > small["estimate_s"]
    # A strategy no recent move used: measured rates, but the config's fixed costs.
    frozen = estimate(settings, "frozen", {"issues": 10_000}, 0, cal)
    assert frozen["calibration"]["fixed_costs"] == "config"
    assert frozen["calibration"]["basis"] == "calibrated from 2 recent moves"


def test_blobs_calibrate_their_bytes_per_second(settings):
    from migrator.moves.calibration import calibrate

    cal = calibrate([_sample("frozen", 50_000, 3.0, 2.0, blob_bytes=100_000_000)])
    assert cal.blob_bytes_per_s == pytest.approx(50e6)
    without = estimate(settings, "frozen", {"issues": 50_000}, 0, cal)
    with_blobs = estimate(settings, "frozen", {"issues": 50_000}, 500_000_000, cal)
    assert with_blobs["estimate_s"] - without["estimate_s"] == pytest.approx(10.0, abs=0.1)


def test_fit_keeps_costs_positive():
    from migrator.moves.calibration import fit

    assert fit([]) is None
    assert fit([(100, 2.0)]).fixed_s == 2.0
    line = fit([(100, 3.0), (200, 2.0)])  # slower when smaller: noise, not a negative cost per row
    assert line.per_row_s == 0 and line.fixed_s == pytest.approx(2.5)
    line = fit([(100_000, 0.5), (200_000, 2.0)])  # would cross zero: through the origin instead
    assert line.fixed_s == 0 and line.per_row_s > 0


def test_measure_shares_each_step_by_the_units_busy_time():
    from types import SimpleNamespace as U

    from migrator.moves.calibration import measure

    units = [U(step="copy_rows", unit="issues:0", table_name="issues", done=8000, bytes_done=800, total=8000,
               result={"seconds": 0.3}),
             U(step="copy_rows", unit="issues:1", table_name="issues", done=8000, bytes_done=800, total=8000,
               result={"seconds": 0.3}),
             U(step="copy_rows", unit="notes:0", table_name="notes", done=2000, bytes_done=300, total=2000,
               result={"seconds": 0.2}),
             U(step="copy_blobs", unit="uploads.file", table_name="uploads", done=5, bytes_done=5000, total=0,
               result={"seconds": 0.1}),
             U(step="verify", unit="issues:0", table_name="issues", done=0, bytes_done=0, total=16000,
               result={"seconds": 0.1}),
             U(step="verify", unit="blobs:uploads.file", table_name="uploads", done=0, bytes_done=0, total=0,
               result={"seconds": 0.1}),
             U(step="catch_up", unit="x", table_name="issues", done=1, bytes_done=1, total=1, result={})]
    rows = {(r["kind"], r["table_name"]): r for r in measure(units, copy_rows_s=1.6, copy_blobs_s=0.5, verify_s=0.4)}
    assert set(rows) == {("rows", "issues"), ("rows", "notes"), ("blobs", "uploads")}
    assert rows[("rows", "issues")]["rows"] == 16000 and rows[("rows", "issues")]["bytes"] == 1600
    assert rows[("rows", "issues")]["copy_s"] == pytest.approx(1.2)  # 0.6 of 0.8 busy seconds, of 1.6 s
    assert rows[("rows", "notes")]["copy_s"] == pytest.approx(0.4)
    assert rows[("rows", "notes")]["verify_s"] is None  # no verify unit of its own here
    assert rows[("blobs", "uploads")]["copy_s"] == pytest.approx(0.5)
    assert rows[("rows", "issues")]["verify_s"] == rows[("blobs", "uploads")]["verify_s"] == pytest.approx(0.2)


def test_one_move_on_a_busy_machine_does_not_drag_the_calibration(settings):
    from migrator.moves.calibration import calibrate, weighted_median

    assert weighted_median([(1.0, 1), (5.0, 1), (100.0, 1)]) == 5.0
    assert weighted_median([(1.0, 1), (3.0, 1)]) == 2.0
    assert weighted_median([(1.0, 10), (100.0, 1)]) == 1.0
    assert weighted_median([]) is None

    def normal(rows):
        return _sample("online", rows, 2.0 + rows / 100_000 + rows * (1 / 200_000 + 1 / 400_000), 0.4)

    slow = _sample("online", 200_000, 30.0, 3.0, copy_rate=50_000, verify_rate=100_000)  # 4x slower
    cal = calibrate([normal(20_000), slow, normal(50_000), normal(150_000)])
    assert cal.copy_rows_per_s["issues"] == pytest.approx(200_000)
    assert cal.fleet_verify_rows_per_s == pytest.approx(400_000)
    assert cal.rest["online"].fixed_s == pytest.approx(2.0) and cal.rest["online"].per_row_s == pytest.approx(1e-5)
    assert cal.window["online"].at(600_000) == pytest.approx(0.4)
