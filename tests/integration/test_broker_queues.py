"""`migrator broker queues` against the session's real Redis: queue names with the configured prefix,
waiting and unacked counts, a redis+socket:// URL, and two clean lines (password masked) when the
broker does not answer."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from migrator.fleet.processes import free_port
from migrator.moves.dispatch import Dispatcher
from tests.support.cli import run_cli, run_json

pytestmark = pytest.mark.integration


def _fleet(fleet_factory, broker_url: str, prefix: str):
    return fleet_factory(topology=False, broker_url=broker_url, overrides={"celery": {"queue_prefix": prefix}})


def _taken_not_acked(broker_url: str, queue: str):
    """A consumer that takes one message from ``queue`` and does not acknowledge it (a worker mid-task)."""
    conn = Connection(broker_url)
    q = conn.SimpleQueue(queue)
    message = q.get(timeout=10)
    return conn, q, message


def test_queues_with_prefix_waiting_and_unacked(fleet_factory, redis_server):
    prefix = f"rb{uuid.uuid4().hex[:6]}-"
    fleet = _fleet(fleet_factory, redis_server.url, prefix)
    dispatcher = Dispatcher(fleet.settings())
    for _ in range(3):
        dispatcher.send("migrator.reconcile")  # control
    conn, q, message = _taken_not_acked(redis_server.url, f"{prefix}control")
    try:
        out = run_json("broker", "queues")
        assert [(d["name"], d["kind"]) for d in out["queues"]] == [
            (f"{prefix}control", "control"), (f"{prefix}rows", "rows"), (f"{prefix}blobs", "blobs")]
        by_kind = {d["kind"]: d for d in out["queues"]}
        assert (by_kind["control"]["messages"], by_kind["control"]["unacked"]) == (2, 1)
        assert (by_kind["rows"]["messages"], by_kind["rows"]["unacked"]) == (0, 0)
        table = run_cli("broker", "queues")
        assert table.exit_code == 0, table.output
        assert f"{prefix}control" in table.stdout and f"{prefix}blobs" in table.stdout
    finally:
        message.ack()
        q.clear()
        q.close()
        conn.close()


def test_queues_through_a_unix_socket(fleet_factory, redis_server):
    prefix = f"rb{uuid.uuid4().hex[:6]}-"
    fleet = _fleet(fleet_factory, redis_server.socket_url, prefix)
    Dispatcher(fleet.settings()).send("migrator.reconcile")
    out = run_json("broker", "queues")
    assert out["broker_url"].startswith("redis+socket://")
    assert out["uptime_s"] >= 0
    assert {d["kind"]: d["messages"] for d in out["queues"]} == {"control": 1, "rows": 0, "blobs": 0}
    with Connection(redis_server.url) as conn:
        conn.SimpleQueue(f"{prefix}control").clear()


def test_broker_down_two_lines_password_masked(fleet_factory):
    _fleet(fleet_factory, f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", "")
    result = run_cli("broker", "queues")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: the broker redis://:***@127.0.0.1:") and "does not answer" in lines[0]
    assert lines[1].startswith("hint: ")
    assert "s3cret-pw" not in result.output + result.stderr
