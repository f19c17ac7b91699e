"""/v1/moves: create (or dry-run), read, list, pause, resume, abort."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from migrator.api.schemas import (
    CELL_PATTERN,
    MoveDetailOut,
    MoveRequest,
    MoveState,
    MoveSummaryOut,
    ReasonBody,
    responses,
)
from migrator.moves.views import move_detail, move_summary

router = APIRouter(prefix="/v1/moves", tags=["moves"])


def _ops(request: Request):
    return request.app.state.services.ops


@router.post("", status_code=201, response_model=None,
             responses=responses(401, 404, 409, 413, 422, 503, ok=MoveSummaryOut, ok_status=201),
             summary="Move an organization to another cell (or dry-run its preflight)",
             description="409 `guardrail_exceeded` when the source, the target or the fleet already has as many "
                         "active moves as the guardrails allow (unless `force` with a `reason`); 503 "
                         "`broker_unavailable` with `move_id` when the move was recorded but its first step could "
                         "not be sent (the reconciler sends it).")
def create_move(body: MoveRequest, request: Request):
    ops = _ops(request)
    if body.dry_run:
        return JSONResponse(ops.dry_run(body.organization_id, body.target_cell, body.strategy), status_code=200)
    move = ops.request_move(body.organization_id, body.target_cell, actor="api",
                            reason=body.reason or "requested through the API", strategy=body.strategy,
                            force=body.force)
    return move_summary(ops.store, move)


@router.get("", response_model=None, responses=responses(401, 422, ok=MoveSummaryOut),
            summary="List moves, newest first")
def list_moves(request: Request,
               state: list[MoveState] | None = Query(None, description="Only moves in these states."),
               cell: str | None = Query(None, pattern=CELL_PATTERN, description="Only moves from or to this cell."),
               organization_id: int | None = Query(None, ge=1, le=2**63 - 1),
               limit: int = Query(100, ge=1, le=1000)):
    ops = _ops(request)
    moves = ops.store.list(states=state or None, cell=cell, organization_id=organization_id, limit=limit)
    now = ops.store.now()
    return [move_summary(ops.store, m, now) for m in moves]


@router.get("/{move_id}", response_model=None, responses=responses(401, 404, ok=MoveDetailOut),
            summary="One move: steps, progress, verification, history")
def get_move(move_id: str, request: Request):
    ops = _ops(request)
    return move_detail(ops.store, ops.store.get(move_id))


@router.post("/{move_id}/abort", response_model=None, responses=responses(401, 404, 409, 422, ok=MoveSummaryOut),
             summary="Abort a move before its flip (lifts the freeze, removes partial target data)")
def abort_move(move_id: str, request: Request, body: ReasonBody | None = None):
    ops = _ops(request)
    move = ops.abort(move_id, actor="api", reason=(body.reason if body else "") or "aborted through the API")
    return move_summary(ops.store, move)


@router.post("/{move_id}/resume", response_model=None, responses=responses(401, 404, 409, ok=MoveSummaryOut),
             summary="Resume a failed or paused move from its last checkpoint")
def resume_move(move_id: str, request: Request):
    ops = _ops(request)
    return move_summary(ops.store, ops.resume(move_id, actor="api"))


@router.post("/{move_id}/pause", response_model=None, responses=responses(401, 404, 409, ok=MoveSummaryOut),
             summary="Pause a running move at its next checkpoint")
def pause_move(move_id: str, request: Request):
    ops = _ops(request)
    return move_summary(ops.store, ops.pause(move_id, actor="api"))
