"""The API under abuse (issue 14), against a real `migrator api serve` (uvicorn) process:

- an unauthenticated 100 MB body is refused without the API buffering it (its RSS, read from
  /proc, grows by less than 20 MB), and so is an authenticated body over api.max_body_bytes;
- nine concurrent moves out of one cell with rebalance.max_moves_per_cell 1: one 201, eight 409
  naming the guardrail; force with a reason starts one more and its history says so;
- with the broker down a move is recorded and the answer is 503 with its id.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from migrator.fleet.processes import free_port
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support.api import TOKEN, auth, configure, start_api
from tests.support.moves import migrator

pytestmark = pytest.mark.integration

MB = 1 << 20


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's RSS in the background; ``peak`` is the largest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, _rss_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_kib(self.pid))


def _post_body(port: int, size: int, *, token: str | None, chunked: bool) -> tuple[int, dict, int]:
    """POST ``size`` bytes to /v1/moves over a raw socket, reading the answer while still sending (as an
    attacker's client would). Returns (status, JSON body, bytes sent before the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = ["POST /v1/moves HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    if token:
        head.append(f"Authorization: Bearer {token}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    answered = threading.Event()

    def pump():
        nonlocal sent
        chunk = b"x" * MB
        try:
            while sent < size and not answered.is_set():
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed the connection

    sender = threading.Thread(target=pump)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        head_end = data.find(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", data[:head_end]).group(1))
        while len(data) < head_end + 4 + length:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    finally:
        answered.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sender.join(30)
        sock.close()
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data[head_end + 4:head_end + 4 + length]), sent


def test_big_bodies_are_refused_without_being_buffered(fleet, topology_server, tmp_path):
    configure(fleet, api={"token": TOKEN})
    proc, url = start_api(fleet, tmp_path / "api.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        for _ in range(3):  # warm up: imports and the first request's allocations
            assert httpx.get(f"{url}/v1/moves", headers=auth(), timeout=10).status_code == 200
        baseline = _rss_kib(proc.pid)
        results = []
        cases = [(None, False)] * 4 + [(None, True), (TOKEN, False), (TOKEN, True)]

        def send(token, chunked):
            results.append((token, chunked, _post_body(port, 100 * MB, token=token, chunked=chunked)))

        with PeakRss(proc.pid) as rss:
            threads = [threading.Thread(target=send, args=case) for case in cases]
            [t.start() for t in threads]
            [t.join(120) for t in threads]
        assert len(results) == len(cases)
        for token, chunked, (status, body, sent) in results:
            if token is None:
                assert (status, body["code"]) == (401, "unauthorized"), body
            else:
                assert (status, body["code"]) == (413, "body_too_large"), body
                assert "api.max_body_bytes" in body["message"]
            assert sent < 100 * MB, f"the whole body was taken (token={bool(token)}, chunked={chunked})"
        growth_mb = (rss.peak - baseline) / 1024
        print(f"api RSS: baseline {baseline / 1024:.1f} MB, peak {rss.peak / 1024:.1f} MB (+{growth_mb:.1f} MB) "
              f"for {len(cases)} bodies of 100 MB")
        assert growth_mb < 20, f"the API's RSS grew by {growth_mb:.1f} MB"
        # Normal requests still work, and a small body is not affected by the limit.
        r = httpx.post(f"{url}/v1/moves", json={"organization_id": 424242, "target_cell": "nope"}, headers=auth(),
                       timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "unknown_cell"
    finally:
        proc.stop()


def test_concurrent_operator_moves_obey_the_guardrails(provisioned, tmp_path):
    fleet = provisioned
    settings = fleet.settings()
    orgs = [o.organization_id for o in seed_organizations(settings, "cell-1", orgs=10, rows=40, blobs=0, skew=False,
                                                          seed=5)]
    configure(fleet, api={"token": TOKEN}, rebalance={"max_moves_per_cell": 1, "max_moves_total": 20})
    proc, url = start_api(fleet, tmp_path / "api.log")  # no worker: the moves stay queued
    try:
        barrier = threading.Barrier(9)
        answers = []

        def request(org):
            with httpx.Client(timeout=60) as http:
                barrier.wait()
                r = http.post(f"{url}/v1/moves", json={"organization_id": org, "target_cell": "cell-2",
                                                       "strategy": "frozen"}, headers=auth())
                answers.append((org, r.status_code, r.json()))

        threads = [threading.Thread(target=request, args=(org,)) for org in orgs[:9]]
        [t.start() for t in threads]
        [t.join(90) for t in threads]
        statuses = sorted(status for _, status, _ in answers)
        assert statuses == [201] + [409] * 8, answers
        for _, status, body in answers:
            if status == 409:
                assert body["code"] == "guardrail_exceeded"
                assert "rebalance.max_moves_per_cell 1" in body["message"] and "--force" in body["hint"]
        store = MoveStore(settings.control_dsn)
        assert len([m for m in store.list() if m.state == "queued"]) == 1

        # force needs a reason; with one the move starts and its history keeps the override.
        forced = {"organization_id": orgs[9], "target_cell": "cell-3", "force": True}
        r = httpx.post(f"{url}/v1/moves", json=forced, headers=auth(), timeout=30)
        assert r.status_code == 422 and "force needs a reason" in r.json()["message"]
        r = httpx.post(f"{url}/v1/moves", json={**forced, "reason": "INC-42: cell-1 must shed now"}, headers=auth(),
                       timeout=30)
        assert r.status_code == 201, r.text
        detail = httpx.get(f"{url}/v1/moves/{r.json()['id']}", headers=auth(), timeout=10).json()
        [event] = [e for e in detail["history"] if e["event"] == "guardrail_overridden"]
        assert "INC-42: cell-1 must shed now" in event["message"] and "rebalance.max_moves_per_cell" in event["message"]
        assert event["actor"] == "api"
    finally:
        proc.stop()
    # The CLI: refused without --force, --force needs --reason.
    waiting = next(org for org, status, _ in answers if status == 409)
    out = migrator(fleet, "move", "--org", str(waiting), "--to", "cell-2")
    assert out.returncode == 1 and "rebalance.max_moves_per_cell" in out.stderr
    assert migrator(fleet, "move", "--org", str(waiting), "--to", "cell-2", "--force").returncode == 2
    out = migrator(fleet, "move", "--org", str(waiting), "--to", "cell-2", "--force", "--reason", "drill", "--json")
    assert out.returncode == 0, out.stderr
    events = [e.event for e in MoveStore(settings.control_dsn).events(json.loads(out.stdout)["id"])]
    assert events == ["requested", "guardrail_overridden"]


def test_broker_down_answers_503_with_the_recorded_move(provisioned):
    from migrator.api import create_app

    fleet = provisioned
    settings = fleet.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=40, blobs=0, skew=False, seed=6)
    configure(fleet, api={"token": TOKEN}, broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    settings = fleet.settings()
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/moves", json={"organization_id": org.organization_id, "target_cell": "cell-2"},
                        headers=auth())
    app.state.services.close()
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "broker_unavailable" and "reconciler" in body["message"]
    move = MoveStore(settings.control_dsn).get(body["move_id"])
    assert (move.organization_id, move.state) == (org.organization_id, "queued")
