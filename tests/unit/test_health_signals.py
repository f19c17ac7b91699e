"""Health indicators' pure logic: limits to signals, the worst signal wins, per-cell limits, and which
steps obey (never inside the write window)."""

from __future__ import annotations

import types

import pytest

from migrator.config import load_settings
from migrator.health.signals import Reading, Signal, classify, merge, p99
from migrator.moves import throttle


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "migrator.yaml"
    path.write_text("control_dsn: postgresql://m@127.0.0.1/control\n"
                    "cells: {c1: {dsn: 'postgresql://m@127.0.0.1/c1'}, c2: {dsn: 'postgresql://m@127.0.0.1/c2'}}\n"
                    "health:\n"
                    "  defaults: {replication_lag_slow_s: 5, replication_lag_stop_s: 30}\n"
                    "  cells: {c2: {replication_lag_stop_s: 10}}\n"
                    "  target_batch_s: 2\n")
    return load_settings(path)


def test_classify_against_two_limits():
    assert classify(1, 5, 30) == (Signal.NORMAL, None)
    assert classify(5, 5, 30) == (Signal.SLOW_DOWN, 5)
    assert classify(31, 5, 30) == (Signal.STOP, 30)
    assert classify(31, None, None) == (Signal.NORMAL, None)
    assert classify(31, 5, None) == (Signal.SLOW_DOWN, 5)
    assert classify(None, 5, 30) == (Signal.NORMAL, None)  # not measurable


def test_p99_is_the_slowest_of_few_samples_and_a_rank_of_many():
    assert p99([3.0, 1.0, 2.0]) == 3.0
    assert p99(list(range(1, 201))) == 198
    with pytest.raises(ValueError):
        p99([])


def test_the_worst_signal_wins_and_its_reason_names_cell_value_and_limit():
    v = merge([Reading("c1", "lock_waits", Signal.SLOW_DOWN, 6, 5, "backends"),
               Reading("c2", "replication_lag", Signal.STOP, 12, 5, "s", "standby s1"),
               Reading("c1", "canary", Signal.NORMAL, 3.2, None, "ms")])
    assert v.signal is Signal.STOP
    assert v.worst.indicator == "replication_lag"
    assert v.reason == "replication lag 12 s on c2 (standby s1) (limit 5 s)"
    assert merge([]).signal is Signal.NORMAL and merge([]).worst is None


def test_a_cell_override_replaces_only_the_keys_it_sets(settings):
    assert settings.health.limits("c1").replication_lag_stop_s == 30
    c2 = settings.health.limits("c2")
    assert (c2.replication_lag_slow_s, c2.replication_lag_stop_s) == (5, 10)


def test_only_work_outside_the_write_window_obeys(settings):
    assert throttle.applies(settings, "online", "copy_rows")
    assert throttle.applies(settings, "online", "catch_up")
    assert throttle.applies(settings, "frozen", "cleanup")
    for step in ("copy_rows", "copy_blobs", "verify"):  # the frozen strategy copies inside its window
        assert not throttle.applies(settings, "frozen", step)
    for step in ("freeze", "drain", "final_delta", "verify_changes", "flip", "preflight"):
        assert not throttle.applies(settings, "online", step)
    settings.health.enabled = False
    assert not throttle.applies(settings, "online", "copy_rows")


def test_batches_shrink_on_slow_down_and_follow_the_target_duration(settings):
    move = types.SimpleNamespace(id="m1", strategy="online")
    pacer = throttle.Pacer(settings, None, move, "t", "copy_rows", tables=["issues"])
    assert pacer.batch_rows(200_000) == 200_000  # no rate measured yet
    throttle._rates[("m1", ("issues",))] = 50_000.0  # rows/s: 2 s batches are 100,000 rows
    assert pacer.batch_rows(200_000) == 100_000
    throttle._rates[("m1", ("issues",))] = 10.0  # never below the slow-down floor
    assert pacer.batch_rows(200_000) == 50_000
    throttle._rates.clear()
    pacer.verdict = merge([Reading("c1", "lock_waits", Signal.SLOW_DOWN, 6, 5, "backends")])
    assert pacer.batch_rows(200_000) == 50_000  # slow_batch_factor 0.25
    frozen = throttle.Pacer(settings, None, types.SimpleNamespace(id="m2", strategy="frozen"), "t", "copy_rows")
    frozen.verdict = pacer.verdict
    assert frozen.batch_rows(200_000) == 200_000  # inside the window: never throttled


def test_a_slowed_down_stream_is_held_to_a_fraction_of_its_full_speed(settings, monkeypatch):
    slept = []
    monkeypatch.setattr(throttle.time, "sleep", slept.append)
    move = types.SimpleNamespace(id="m3", strategy="online")
    pacer = throttle.Pacer(settings, None, move, "t", "copy_rows", tables=["notes"])
    pacer.on_chunk(10_000_000)  # no full-speed rate measured yet: nothing to hold it to
    assert slept == []
    throttle._full_rates[("m3", ("notes",))] = 1_000_000.0  # bytes/s at full speed
    pacer.verdict = merge([Reading("c1", "commit_latency", Signal.SLOW_DOWN, 80, 50, "ms")])
    pacer._since = throttle.time.monotonic()
    pacer._streamed = 0
    pacer.on_chunk(250_000)  # at slow_rate_fraction 0.5: 500,000 bytes/s allowed, so about 0.5 s ahead
    assert len(slept) == 1 and 0.4 < slept[0] <= 0.5
    throttle._full_rates.clear()


def test_an_autovacuum_throttle_is_lifted_only_by_a_reading_of_its_own_tables():
    held = {"indicator": "autovacuum", "tables": ["issues"]}
    assert throttle._about_other_tables(held, ["notes"])
    assert not throttle._about_other_tables(held, ["issues"])
    assert not throttle._about_other_tables({"indicator": "canary", "tables": ["issues"]}, ["notes"])
