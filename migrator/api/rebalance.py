"""/v1/cells (capacity readings from the cache), /v1/alerts (Alertmanager), /v1/rebalance, /v1/organizations."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request

from migrator.api.schemas import (
    CELL_PATTERN,
    AlertsAccepted,
    CellOut,
    DecisionOut,
    OrganizationId,
    PlanOut,
    PlanRequest,
    PlanStatus,
    ReasonBody,
    responses,
)
from migrator.rebalance.alerts import WebhookPayload, alert_as_dict, receive
from migrator.rebalance.readings import reading_as_dict
from migrator.rebalance.service import decision_as_dict, plan_as_dict
from migrator.rebalance.store import InvalidPlanState

log = logging.getLogger(__name__)
router = APIRouter(tags=["capacity and rebalancing"])


def _svc(request: Request):
    return request.app.state.services


@router.get("/v1/cells", response_model=None, responses=responses(401, ok=CellOut),
            summary="Cells and their latest capacity readings (cached; refreshed by celery beat)")
def list_cells(request: Request):
    svc = _svc(request)
    store = svc.rebalancer.store
    now = store.now()
    settings = request.app.state.settings
    readings = {r.cell: r for r in store.cell_readings()}
    out = []
    for name in sorted(set(settings.cells) | set(readings)):
        r = readings.get(name)
        th = settings.rebalance.thresholds(name)
        if r is None:
            out.append({"cell": name, "state": "unmeasured", "organizations": 0, "bytes": 0, "measured_at": None,
                        "age_s": None, "hot": None, "error": "no reading yet (celery beat measures every "
                        f"{settings.rebalance.readings_every_s:g} s)"})
            continue
        data = reading_as_dict(r, now, thresholds=th)
        data["configured"] = name in settings.cells
        out.append(data)
    return out


@router.post("/v1/alerts", status_code=202, response_model=None,
             responses=responses(401, 422, 503, ok=AlertsAccepted, ok_status=202),
             summary="Alertmanager webhook (payload version 4)")
def post_alerts(payload: WebhookPayload, request: Request):
    svc = _svc(request)
    results = receive(request.app.state.settings, svc.rebalancer.store, payload, svc.enqueue_alert)
    return {"accepted": len(results), "alerts": results}


@router.get("/v1/alerts", response_model=None, responses=responses(401, 422),
            summary="Alerts received, newest first")
def list_alerts(request: Request, cell: str | None = Query(None, pattern=CELL_PATTERN),
                limit: int = Query(100, ge=1, le=1000)):
    store = _svc(request).rebalancer.store
    return [alert_as_dict(a) for a in store.alerts(cell=cell, limit=limit)]


@router.get("/v1/rebalance", response_model=None, responses=responses(401),
            summary="The rebalancer: paused or not, guardrails, open plans")
def rebalance_status(request: Request):
    return _svc(request).rebalancer.status()


@router.post("/v1/rebalance/pause", response_model=None, responses=responses(401, 422),
             summary="Pause the rebalancer: no plan is made or started until resumed")
def rebalance_pause(request: Request, body: ReasonBody | None = None):
    rb = _svc(request).rebalancer
    rb.pause("api", body.reason if body else "")
    return rb.status()


@router.post("/v1/rebalance/resume", response_model=None, responses=responses(401, 422),
             summary="Resume the rebalancer")
def rebalance_resume(request: Request, body: ReasonBody | None = None):
    rb = _svc(request).rebalancer
    rb.resume("api", body.reason if body else "")
    return rb.status()


@router.get("/v1/rebalance/decisions", response_model=None, responses=responses(401, 404, 422, ok=DecisionOut),
            summary="Every decision of the rebalancer, newest first")
def list_decisions(request: Request, cell: str | None = Query(None, pattern=CELL_PATTERN),
                   plan_id: str | None = Query(None, max_length=64), alert_id: int | None = Query(None, ge=1,
                                                                                                   le=2**63 - 1),
                   kind: str | None = Query(None, pattern=r"^[a-z_]{1,32}$"), limit: int = Query(100, ge=1, le=1000)):
    store = _svc(request).rebalancer.store
    return [decision_as_dict(d) for d in store.decisions(cell=cell, plan_id=plan_id, alert_id=alert_id, kind=kind,
                                                         limit=limit)]


@router.get("/v1/rebalance/plans", response_model=None, responses=responses(401, 422, ok=PlanOut),
            summary="Plans, newest first")
def list_plans(request: Request, cell: str | None = Query(None, pattern=CELL_PATTERN),
               status: list[PlanStatus] | None = Query(None), limit: int = Query(50, ge=1, le=500)):
    store = _svc(request).rebalancer.store
    return [plan_as_dict(store, p) for p in store.plans(cell=cell, statuses=status or None, limit=limit)]


@router.post("/v1/rebalance/plans", status_code=201, response_model=None,
             responses=responses(401, 404, 422, ok=PlanOut, ok_status=201),
             summary="Plan for a cell from the cached readings; the plan waits for approval")
def create_plan(body: PlanRequest, request: Request):
    rb = _svc(request).rebalancer
    row, _ = rb.make_plan(body.cell, trigger="operator", actor="api", status="awaiting_approval")
    return plan_as_dict(rb.store, row)


@router.get("/v1/rebalance/plans/{plan_id}", response_model=None, responses=responses(401, 404, ok=PlanOut),
            summary="One plan with the reason for every choice")
def get_plan(plan_id: str, request: Request):
    store = _svc(request).rebalancer.store
    return plan_as_dict(store, store.get_plan(plan_id))


@router.post("/v1/rebalance/plans/{plan_id}/apply", status_code=202, response_model=None,
             responses=responses(401, 404, 409, 503, ok=PlanOut, ok_status=202),
             summary="Approve a plan; a worker starts its moves within the guardrails")
def apply_plan(plan_id: str, request: Request):
    svc = _svc(request)
    rb = svc.rebalancer
    plan = rb.store.get_plan(plan_id)
    if plan.status == "awaiting_approval":
        rb.approve(plan, "api")
    elif plan.status != "applying":
        raise InvalidPlanState(f"plan {plan.id} is {plan.status}; only a plan awaiting approval can be applied",
                               "make a new plan for the cell")
    svc.enqueue_apply(str(plan.id))
    return plan_as_dict(rb.store, rb.store.get_plan(plan.id))


@router.put("/v1/organizations/{organization_id}/pin", response_model=None, responses=responses(401, 422),
            summary="Pin an organization: the rebalancer never moves it")
def pin_org(organization_id: OrganizationId, request: Request, body: ReasonBody | None = None):
    _svc(request).rebalancer.pin(organization_id, "api", body.reason if body else "")
    return {"organization_id": organization_id, "pinned": True}


@router.delete("/v1/organizations/{organization_id}/pin", response_model=None, responses=responses(401, 422),
               summary="Unpin an organization")
def unpin_org(organization_id: OrganizationId, request: Request):
    removed = _svc(request).rebalancer.unpin(organization_id, "api")
    return {"organization_id": organization_id, "pinned": False, "was_pinned": removed}
