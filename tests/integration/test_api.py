"""The HTTP API in-process (ASGI) on a real control database, Topology Service and Redis:
authentication, error mapping, and a bounded schemathesis run that must find no server error."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.support.api import TOKEN, alertmanager_payload, auth, configure

pytestmark = pytest.mark.integration
# Examples per operation and generation mode (positive, negative) of the schemathesis run.
EXAMPLES = 15


@pytest.fixture
def api_settings(fleet, topology_server):
    configure(fleet, api={"token": TOKEN},
              rebalance={"defaults": {"high_water_bytes": 10_000_000, "low_water_bytes": 8_000_000}})
    return fleet.settings()


@pytest.fixture
def app(api_settings):
    from migrator.api import create_app

    app = create_app(api_settings)
    yield app
    app.state.services.close()


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _counts(settings) -> dict:
    import psycopg

    with psycopg.connect(settings.control_dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed table names
                for t in ("moves", "rebalance_alerts", "rebalance_decisions", "rebalance_plans", "rebalancer_state",
                          "organization_pins")}


def test_token_required_and_nothing_changes_without_it(client, api_settings):
    assert client.get("/healthz").json()["status"] == "ok"  # no token needed
    before = _counts(api_settings)
    calls = [("get", "/v1/moves", None), ("post", "/v1/moves", {"organization_id": 1, "target_cell": "cell-2"}),
             ("get", "/v1/cells", None), ("post", "/v1/alerts", alertmanager_payload("cell-1")),
             ("post", "/v1/rebalance/pause", {}), ("put", "/v1/organizations/7/pin", {}),
             ("post", "/v1/rebalance/plans", {"cell": "cell-1"}), ("get", "/v1/rebalance/decisions", None)]
    for headers in ({}, auth("wrong-token-0123456789abcdef"), {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path, body in calls:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    assert _counts(api_settings) == before
    assert client.get("/v1/moves", headers=auth()).status_code == 200


def test_errors_are_json_with_stable_codes(client):
    h = auth()
    r = client.post("/v1/moves", json={"organization_id": "x", "target_cell": "cell-2"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "validation_error" and "organization_id" in r.json()["message"]
    r = client.post("/v1/moves", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/moves", json={"organization_id": 424242, "target_cell": "nope"}, headers=h)
    assert r.status_code == 404 and r.json()["code"] == "unknown_cell" and r.json()["hint"]
    r = client.post("/v1/moves", json={"organization_id": 424242, "target_cell": "bad name!"}, headers=h)
    assert r.status_code == 422
    for path in ("/v1/moves/not-a-uuid", "/v1/moves/00000000-0000-0000-0000-000000000000"):
        r = client.get(path, headers=h)
        assert r.status_code == 404 and r.json()["code"] == "unknown_move"
    r = client.post("/v1/moves/00000000-0000-0000-0000-000000000000/abort", headers=h)
    assert r.status_code == 404
    r = client.get("/v1/rebalance/plans/nope", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "unknown_plan"
    r = client.get("/v1/moves", params={"state": "sleeping"}, headers=h)
    assert r.status_code == 422
    r = client.get("/v1/nothing-here", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    bad = alertmanager_payload("cell-1")
    bad["alerts"][0]["fingerprint"] = "a\x00b"
    assert client.post("/v1/alerts", json=bad, headers=h).status_code == 422
    spec = client.get("/openapi.json").json()
    assert "/v1/alerts" in spec["paths"] and "HTTPBearer" in spec["components"]["securitySchemes"]


def test_alert_deliveries_are_deduplicated(client, api_settings):
    from migrator.rebalance.store import RebalanceStore

    store = RebalanceStore(api_settings.control_dsn)
    h = auth()
    first = client.post("/v1/alerts", json=alertmanager_payload("cell-1"), headers=h)
    assert first.status_code == 202 and first.json()["alerts"][0]["result"] == "enqueued"
    again = client.post("/v1/alerts", json=alertmanager_payload("cell-1"), headers=h)
    assert again.status_code == 202 and again.json()["alerts"][0]["result"] == "duplicate"
    # A new firing of the same series (new startsAt) is a new alert.
    refire = client.post("/v1/alerts", json=alertmanager_payload("cell-1", starts_at="2026-11-28T12:00:00Z"),
                         headers=h)
    assert refire.json()["alerts"][0]["result"] == "enqueued"
    resolved = client.post("/v1/alerts", json=alertmanager_payload("cell-1", status="resolved"), headers=h)
    assert resolved.json()["alerts"][0]["result"] == "resolved"
    other = client.post("/v1/alerts", json=alertmanager_payload("cell-1", alertname="DiskFull", fingerprint="ff"),
                        headers=h)
    assert other.json()["alerts"][0]["result"] == "ignored"
    nocell = client.post("/v1/alerts", json=alertmanager_payload("cell-77", fingerprint="ee"), headers=h)
    assert nocell.json()["alerts"][0]["result"] == "ignored"

    alerts = {(a.fingerprint, a.starts_at.hour): a for a in store.alerts()}
    assert len(alerts) == 4
    assert alerts[("a1b2c3d4e5f60718", 10)].status == "resolved"
    kinds = [d.kind for d in store.decisions()]
    assert kinds.count("alert_received") == 2 and "alert_resolved" in kinds and "alert_ignored" in kinds
    listed = client.get("/v1/rebalance/decisions", params={"cell": "cell-1"}, headers=h).json()
    assert any(d["kind"] == "alert_received" for d in listed)


def test_schemathesis_finds_no_server_error(app):
    """Every operation of /openapi.json, with valid (positive) and invalid (negative) input: no 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, ran = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                nonlocal ran
                ran += 1
                response = case.call(headers=auth())
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r}: "
                                    f"{response.status_code} {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    assert ran > 200
    assert not failures, "\n".join(failures[:20])
