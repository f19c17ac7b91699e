"""Request bodies (validated strictly: a bad one is a 422, never a 500) and documented responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from migrator.moves import workflow as wf
from migrator.rebalance.alerts import SafeStr

CELL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
CellName = Annotated[str, Field(pattern=CELL_PATTERN, description="A cell name as configured (cell-1).")]
OrganizationId = Annotated[int, Field(ge=1, le=2**63 - 1, description="An organization id.")]
Reason = Annotated[SafeStr, Field(max_length=2000, description="Why (kept in the history).")]
MoveState = Literal[wf.QUEUED, wf.RUNNING, wf.PAUSED, wf.FAILED, wf.ABORTING, wf.COMPLETED, wf.ABORTED,
                    wf.REJECTED, wf.CLEANED]
PlanStatus = Literal["awaiting_approval", "applying", "done", "superseded", "empty"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MoveRequest(_Body):
    organization_id: OrganizationId
    target_cell: CellName
    reason: Reason = ""
    dry_run: bool = Field(False, description="Run preflight only and return the plan; nothing is recorded.")
    strategy: Literal["online", "frozen"] | None = Field(
        None, description="online: copy while writable, freeze for the last delta; frozen: freeze, then copy. "
                          "Default: the config's moves.default_strategy.")
    force: bool = Field(False, description="Start the move even past the concurrency guardrails "
                                           "(rebalance.max_moves_per_cell, max_moves_total). Needs a reason, "
                                           "which the move's history keeps.")

    @model_validator(mode="after")
    def _force_needs_a_reason(self) -> MoveRequest:
        if self.force and not self.reason.strip():
            raise ValueError("force needs a reason (kept in the move's history)")
        return self


class ReasonBody(_Body):
    reason: Reason = ""


class PlanRequest(_Body):
    cell: CellName


# ------------------------------------------------------------------------ documented responses


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorOut(_Out):
    code: str = Field(description="Stable error code (unknown_move, move_conflict, validation_error, ...).")
    message: str
    hint: str | None = None


class HealthOut(_Out):
    status: Literal["ok", "failing"]
    checks: dict[str, Any]


class MoveSummaryOut(_Out):
    id: str
    organization_id: int
    source: str
    target: str
    state: str
    step: str
    attempt: int
    error: str | None = None
    error_code: str | None = None
    throttled: dict[str, Any] | None = Field(
        default=None, description="While a cell's health indicator holds the move's units back: the reading "
        "(cell, indicator, signal, value, limit, reason), `text` such as \"paused: replication lag 12 s on cell-1 "
        "(limit 5 s)\" and `since_s` (docs/adr/0019-health-indicators.md); null otherwise.")
    requested_by: str
    reason: str
    created_at: str | None = None


class MoveDetailOut(MoveSummaryOut):
    plan: dict[str, Any] = {}
    report: dict[str, Any] = {}
    freeze_lifted: bool = False
    write_window_s: float | None = None
    write_window_open: bool = False
    progress: dict[str, Any] = {}
    history: list[dict[str, Any]] = []


class CellOut(_Out):
    cell: str
    state: str
    organizations: int
    bytes: int
    measured_at: str | None = None
    age_s: float | None = None
    hot: bool | None = None


class AlertsAccepted(_Out):
    accepted: int
    alerts: list[dict[str, Any]]


class DecisionOut(_Out):
    id: int
    at: str | None = None
    kind: str
    cell: str | None = None
    organization_id: int | None = None
    plan_id: str | None = None
    move_id: str | None = None
    actor: str
    message: str


class PlanOut(_Out):
    id: str
    cell: str
    status: str
    summary: str
    items: list[dict[str, Any]]


def responses(*codes: int, ok: type[BaseModel] | None = None, ok_status: int = 200) -> dict:
    out: dict = {}
    if ok is not None:
        out[ok_status] = {"model": ok}
    for code in codes:
        out[code] = {"model": ErrorOut}
    return out
