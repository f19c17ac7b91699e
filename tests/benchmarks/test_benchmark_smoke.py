"""Each benchmark script, run exactly as documented but at tiny sizes, so none of them can rot.

No timing is asserted here (figures on a shared test machine mean nothing); only that each script
runs end to end, prints its table, writes its JSON, and that the moves it measured were correct.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, tmp_path: Path, timeout: float = 300) -> dict:
    out = tmp_path / f"{Path(script).stem}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_") or k == "MIGRATOR_TEST_PG"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.strip(), "no table printed"
    return json.loads(out.read_text())


def test_move_benchmark(tmp_path):
    result = _run("move.py", "--rows", "2000", "--blobs", "6", "--workers", "1", "--strategies", "frozen,online",
                  tmp_path=tmp_path)
    assert [r["strategy"] for r in result["runs"]] == ["frozen", "online"]
    for run in result["runs"]:
        assert run["rows"] == 2000 and run["workers"] == 1
        assert run["raw"]["copy"]["rows"] == 2000
        move = run["move"]
        assert move["strategy"] == run["strategy"]
        assert move["verify"]["ok"] is True
        assert move["copy_rows"]["rows"] == 2000
        assert {"preflight", "freeze", "drain", "copy_rows", "copy_blobs", "verify", "flip",
                "unfreeze"} <= set(move["steps_s"])
        assert move["write_window_s"] > 0
        assert move["memory"]["peak_process_rss_mib"] > 0
        assert move["copy_rows"]["overhead"]["unit_tasks"] == move["copy_rows"]["units"]
        assert set(run["ratios"]) >= {"copy", "verify", "write_window"}


def test_concurrent_benchmark(tmp_path):
    result = _run("concurrent.py", "--orgs", "3", "--rows", "300", "--blobs", "3", "--workers", "1",
                  "--concurrency", "2", tmp_path=tmp_path)
    assert result["completed"] == result["verified"] == result["rows_equal"] == 3
    assert {m["target"] for m in result["moves"]} == {"cell-2", "cell-3"}
    assert result["moves_per_min"] > 0


def test_guard_overhead_benchmark(tmp_path):
    result = _run("guard_overhead.py", "--rows", "500", "--ops", "20", "--bulk", "200", "--rounds", "1",
                  tmp_path=tmp_path)
    assert set(result["writes_per_s"]) == {"no guard", "guard, idle", "guard, other org frozen"}
    for mode in result["writes_per_s"].values():
        assert all(v > 0 for v in mode.values())


def test_write_window_benchmark(tmp_path):
    result = _run("write_window.py", "--rows", "1500", "--online-moves", "1", "--frozen-moves", "1", "--rate", "60",
                  "--workers", "2", "--kill-trials", "1", tmp_path=tmp_path)
    assert [r["strategy"] for r in result["runs"]] == ["frozen", "online", "online"]
    for run in result["runs"]:
        assert run["verified"] and run["writes_lost"] == 0 and run["write_errors"] == 0
        assert run["writes_acked"] > 0 and run["writer_window_s"] is not None
    assert result["runs"][1]["catch_up_rounds"] >= 0
    assert result["runs"][2]["killed"]  # killed inside the window, or why the moment was missed


def test_blobs_benchmark(tmp_path):
    result = _run("blobs.py", "--small", "12", "--small-kb", "1-4", "--large", "3", "--large-mb", "6",
                  "--parallelism", "2", tmp_path=tmp_path)
    assert result["small"]["objects"] == 12 and result["large"]["objects"] == 3
    for kind in ("small", "large"):
        for mode in ("streamed", "server_side"):
            move = result[kind][mode]["move"]
            assert move["verified"] and move["copied"] == result[kind]["objects"]
            assert result[kind][mode]["ratio"] > 0
        assert result[kind]["server_side"]["move"]["bytes_read"] == 0
        assert result[kind]["server_side"]["move"]["server_side"] == result[kind]["objects"]
        assert result[kind]["streamed"]["move"]["bytes_read"] == result[kind]["bytes"]
    assert result["large"]["streamed"]["move"]["memory"]["peak_process_rss_mib"] > 0


def test_scale_benchmark(tmp_path):
    result = _run("scale.py", "--source-rows", "6000", "--target-rows", "2000", "--growth", "2", "--small", "300",
                  "--large", "900", "--template-rows", "500", "--blobs", "3", "--strategies", "online",
                  "--repeat", "2",
                  tmp_path=tmp_path)
    assert result["cells"]["cell-3"]["rows"] >= 6000 and result["cells"]["cell-4"]["rows"] >= 2000
    assert result["cells"]["grown"]["clones"] >= 2 * result["cells"]["cell-3"]["clones"]
    runs = {(r["phase"], r["size"], r["strategy"]): r for r in result["runs"]}
    assert len(runs) == 6  # empty, full, grown x small, large (one strategy keeps the suite lean)
    for (_phase, size, _strategy), run in runs.items():
        assert run["verified"] is True
        assert run["rows"] == run["raw_copy_rows"] == (300 if size == "small" else 900)
        assert {"preflight", "copy_rows", "verify", "cleanup"} <= set(run["steps_s"])
    assert runs[("full", "small", "online")]["steps_s"]["catch_up"] >= 0
    assert len(runs[("full", "small", "online")]["repeats"]) == 2  # medians of two moves
    ratios = result["ratios"]["small/online"]
    assert {"total", "preflight", "copy_rows", "verify", "cleanup"} <= set(ratios["full_vs_empty"])
    assert "total" in ratios["grown_vs_full"]
    assert set(result["ratios"]["large/online"]["copy_vs_raw"]) == {"empty", "full", "grown"}


def test_router_benchmark(tmp_path):
    from tests.support.edge import haproxy_binary

    if haproxy_binary()[0] is None:
        pytest.skip(f"haproxy is not available ({haproxy_binary()[1]})")
    result = _run("router.py", "--online-moves", "1", "--frozen-moves", "1", "--rows", "300", "--bystanders", "1",
                  "--workers", "1", "--rate", "40", "--threads", "4", "--overhead-rate", "10", "--lookups", "1000",
                  "--classify-runs", "1", tmp_path=tmp_path)
    assert [m["strategy"] for m in result["moves"]] == ["frozen", "online"]
    assert [(m["from"], m["to"]) for m in result["moves"]] == [("cell-1", "cell-2"), ("cell-2", "cell-3")]
    client = result["client"]
    assert client["requests"] > 0 and client["writes_acked"] > 0
    assert (client["writes_acked_but_missing"], client["reads_failed"],
            client["answers_not_2xx_or_503_retry_after"]) == (0, 0, 0), client["examples"]
    assert result["propagation"]["flips"] == 2 and result["propagation"]["not_seen_within_30s"] == 0
    assert result["overhead"]["pairs"] > 0 and result["lookup_cache"]["lookups"] == 1000
    assert set(result["classify_cli"]) == {"json", "table"} and set(result["targets"]) >= {"flip_p99_le_100ms"}


def test_bystanders_benchmark(tmp_path):
    from tests.support.postgres import cluster_bin, require_runuser

    require_runuser()
    cluster_bin("pg_basebackup")
    result = _run("bystanders.py", "--smoke", "--idle-s", "2", "--settle-s", "0", tmp_path=tmp_path, timeout=600)
    assert [p["phase"] for p in result["phases"]] == ["idle", "raw COPY", "unthrottled move", "throttled move",
                                                      "idle after"]
    for phase in result["phases"]:
        if phase["phase"] == "raw COPY":
            continue  # a tenth of a second at this size: maybe no operation, no lag sample in it
        for cell in ("cell-1", "cell-2"):
            assert phase["cells"][cell]["ops"] > 0 and phase["cells"][cell]["p99_ms"] is not None
        assert phase["standby_lag"]["samples"] > 0  # the real standby was read
    assert result["raw_copy"]["rows"] == 3000
    for name in ("unthrottled", "throttled"):
        move = result["moves"][name]
        assert move["completed"] and move["verified"] and move["rows"] == 3000, move
    assert result["moves"]["unthrottled"]["throttle_events"] == {}  # health off
    assert set(result["health"]["cells"]) == {"cell-1", "cell-2"}
    assert result["bystander_errors"] == {"cell-1": [], "cell-2": []}
    assert set(result["summary"]["p99_vs_idle"]) >= {"unthrottled move", "throttled move"}
    assert (tmp_path / "bystanders.md").exists()


def test_estimate_accuracy_benchmark(tmp_path):
    result = _run("estimate_accuracy.py", "--sizes", "1200,2400", "--calibrate", "1500", "--blobs", "3",
                  "--strategies", "online", tmp_path=tmp_path)
    (run,) = result["runs"]
    assert [m["rows"] for m in run["calibration_moves"]] == [1500]
    assert [r["rows"] for r in run["results"]] == [1200, 2400]
    for i, r in enumerate(run["results"]):
        # Calibrated from the calibration move and every measured move before it.
        assert r["basis"] == f"calibrated from {1 + i} recent move{'s' if i else ''}"
        assert r["calibration"]["fixed_costs"] == "measured"
        assert r["actual_s"] > 0 and r["actual_window_s"] > 0
        assert r["ratio"] > 0 and r["window_ratio"] > 0 and r["config_ratio"] > 0
