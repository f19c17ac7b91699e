"""The rebalancer's state in the control database: readings cache, alerts, plans, decisions, pins, pause.

Like the move store, every change that two processes could race on is one SQL statement that
compares before it sets: an alert is inserted once per (fingerprint, startsAt), claimed once by a
worker; a plan item goes pending -> started once. Applying plans holds an advisory lock so two
appliers never count the same free guardrail slot twice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from migrator.control.engine import control_engine, session_factory
from migrator.control.models import (
    CellReading,
    Move,
    OrganizationPin,
    OrgReading,
    RebalanceAlert,
    RebalanceDecision,
    RebalancePlan,
    RebalancePlanItem,
    RebalancerState,
)
from migrator.errors import MigratorError
from migrator.moves import workflow as wf
from migrator.observability import metrics

APPLY_LOCK = 0x6D67726562616C00  # "mgrebal": one plan applier at a time
OPEN_PLAN_STATES = ("awaiting_approval", "applying")


class UnknownPlan(MigratorError):
    code = "unknown_plan"


class InvalidPlanState(MigratorError):
    code = "invalid_plan_state"


def plan_uuid(plan_id) -> uuid.UUID:
    if isinstance(plan_id, uuid.UUID):
        return plan_id
    try:
        return uuid.UUID(str(plan_id))
    except ValueError:
        raise UnknownPlan(f"{plan_id!r} is not a plan id", "list plans with `migrator rebalance plans`") from None


class RebalanceStore:
    def __init__(self, control_dsn: str):
        self.dsn = control_dsn
        self.Session = session_factory(control_dsn)

    def now(self) -> dt.datetime:
        with self.Session() as s:
            return s.scalar(text("SELECT now()"))

    # ------------------------------------------------------------------ readings (the cache)
    def save_reading(self, cell: dict, orgs: list[dict]) -> None:
        """Replace a cell's reading and its organizations' readings in one transaction."""
        with self.Session() as s:
            values = {**cell, "measured_at": func.now(), "error": None}
            s.execute(pg_insert(CellReading).values(values).on_conflict_do_update(
                index_elements=[CellReading.cell], set_={k: v for k, v in values.items() if k != "cell"}))
            s.execute(delete(OrgReading).where(OrgReading.cell == cell["cell"]))
            if orgs:
                s.execute(pg_insert(OrgReading).values([{**o, "cell": cell["cell"]} for o in orgs]))
            s.commit()

    def save_reading_error(self, cell: str, error: str, state: str = "unknown") -> None:
        """A cell that could not be measured keeps its last numbers and says why they are old."""
        with self.Session() as s:
            s.execute(pg_insert(CellReading).values(cell=cell, error=error, state=state, tables={})
                      .on_conflict_do_update(index_elements=[CellReading.cell], set_={"error": error}))
            s.commit()

    def cell_readings(self) -> list[CellReading]:
        with self.Session() as s:
            return list(s.scalars(select(CellReading).order_by(CellReading.cell)))

    def org_readings(self, cell: str | None = None) -> list[OrgReading]:
        q = select(OrgReading).order_by(OrgReading.cell, OrgReading.organization_id)
        if cell is not None:
            q = q.where(OrgReading.cell == cell)
        with self.Session() as s:
            return list(s.scalars(q))

    def oldest_reading_at(self) -> dt.datetime | None:
        with self.Session() as s:
            return s.scalar(select(func.min(CellReading.measured_at)))

    # ------------------------------------------------------------------ moves (read only)
    def active_moves(self) -> list[Move]:
        with self.Session() as s:
            return list(s.scalars(select(Move).where(Move.state.in_(wf.ACTIVE_STATES))))

    def last_move_end(self, organization_ids: Iterable[int] | None = None) -> dict[int, dt.datetime]:
        """When each organization's most recent finished move ended (for the cooldown)."""
        ended = func.coalesce(Move.completed_at, Move.updated_at)
        q = select(Move.organization_id, func.max(ended)).where(Move.state.in_(wf.TERMINAL_STATES)) \
            .group_by(Move.organization_id)
        if organization_ids is not None:
            q = q.where(Move.organization_id.in_(list(organization_ids)))
        with self.Session() as s:
            return {int(org): at for org, at in s.execute(q)}

    # ------------------------------------------------------------------ alerts
    def record_alert(self, *, fingerprint: str, starts_at: dt.datetime, ends_at: dt.datetime | None, status: str,
                     alertname: str, cell: str | None, group_key: str, labels: dict, annotations: dict,
                     state: str) -> tuple[int | None, RebalanceAlert | None]:
        """Insert an alert once. Returns (new id, None) or (None, the alert already recorded)."""
        with self.Session() as s:
            new_id = s.scalar(pg_insert(RebalanceAlert).values(
                fingerprint=fingerprint, starts_at=starts_at, ends_at=ends_at, status=status, alertname=alertname,
                cell=cell, group_key=group_key, labels=labels, annotations=annotations, state=state,
            ).on_conflict_do_nothing(constraint="uq_rebalance_alerts_fingerprint_starts_at")
                .returning(RebalanceAlert.id))
            s.commit()
            metrics.alerts_received.labels(alertname, status, "new" if new_id is not None else "duplicate").inc()
            if new_id is not None:
                return int(new_id), None
            existing = s.scalars(select(RebalanceAlert).where(RebalanceAlert.fingerprint == fingerprint,
                                                              RebalanceAlert.starts_at == starts_at)).first()
            return None, existing

    def resolve_alert(self, alert_id: int, ends_at: dt.datetime | None) -> bool:
        """firing -> resolved (once); False when it was already resolved."""
        with self.Session() as s:
            row = s.scalar(update(RebalanceAlert).where(RebalanceAlert.id == alert_id,
                                                        RebalanceAlert.status != "resolved")
                           .values(status="resolved", ends_at=ends_at, updated_at=func.now())
                           .returning(RebalanceAlert.id))
            s.commit()
            return row is not None

    def forget_alert(self, alert_id: int) -> None:
        """Undo the recording of an alert whose task could not be enqueued (Alertmanager will retry)."""
        with self.Session() as s:
            s.execute(delete(RebalanceAlert).where(RebalanceAlert.id == alert_id))
            s.execute(delete(RebalanceDecision).where(RebalanceDecision.alert_id == alert_id))
            s.commit()

    def claim_alert(self, alert_id: int) -> RebalanceAlert | None:
        """received -> handling; None when another worker has it or it is done."""
        with self.Session() as s:
            row = s.scalars(update(RebalanceAlert).where(RebalanceAlert.id == alert_id,
                                                         RebalanceAlert.state == "received")
                            .values(state="handling", updated_at=func.now()).returning(RebalanceAlert)).first()
            s.commit()
            return row

    def set_alert_state(self, alert_id: int, state: str) -> None:
        with self.Session() as s:
            s.execute(update(RebalanceAlert).where(RebalanceAlert.id == alert_id)
                      .values(state=state, updated_at=func.now()))
            s.commit()

    def stale_alerts(self, received_s: float, handling_s: float) -> list[RebalanceAlert]:
        """Alerts whose task seems lost (received long ago and never claimed, or claimed by a worker
        that died long ago): handed back (state received) for the tick to re-enqueue."""
        now, at = func.now(), RebalanceAlert.updated_at
        lost = or_(and_(RebalanceAlert.state == "received", at < now - dt.timedelta(seconds=received_s)),
                   and_(RebalanceAlert.state == "handling", at < now - dt.timedelta(seconds=handling_s)))
        with self.Session() as s:
            rows = list(s.scalars(update(RebalanceAlert).where(lost)
                                  .values(state="received", updated_at=func.now()).returning(RebalanceAlert)))
            s.commit()
            return rows

    def get_alert(self, alert_id: int) -> RebalanceAlert | None:
        with self.Session() as s:
            return s.get(RebalanceAlert, alert_id)

    def alerts(self, *, cell: str | None = None, limit: int = 100) -> list[RebalanceAlert]:
        q = select(RebalanceAlert).order_by(RebalanceAlert.id.desc()).limit(limit)
        if cell is not None:
            q = q.where(RebalanceAlert.cell == cell)
        with self.Session() as s:
            return list(s.scalars(q))

    # ------------------------------------------------------------------ decisions
    def decide(self, kind: str, message: str, *, cell: str | None = None, organization_id: int | None = None,
               plan_id=None, alert_id: int | None = None, move_id=None, actor: str = "rebalancer",
               detail: dict | None = None) -> None:
        with self.Session() as s:
            s.add(RebalanceDecision(kind=kind, message=message, cell=cell, organization_id=organization_id,
                                    plan_id=plan_uuid(plan_id) if plan_id else None, alert_id=alert_id,
                                    move_id=move_id, actor=actor, detail=detail or {}))
            s.commit()
        metrics.rebalancer_decisions.labels(kind).inc()

    def decisions(self, *, cell: str | None = None, plan_id=None, alert_id: int | None = None,
                  kind: str | None = None, limit: int = 100) -> list[RebalanceDecision]:
        q = select(RebalanceDecision).order_by(RebalanceDecision.id.desc()).limit(limit)
        if cell is not None:
            q = q.where(RebalanceDecision.cell == cell)
        if plan_id is not None:
            q = q.where(RebalanceDecision.plan_id == plan_uuid(plan_id))
        if alert_id is not None:
            q = q.where(RebalanceDecision.alert_id == alert_id)
        if kind is not None:
            q = q.where(RebalanceDecision.kind == kind)
        with self.Session() as s:
            return list(s.scalars(q))

    # ------------------------------------------------------------------ plans
    def create_plan(self, *, cell: str, status: str, trigger: str, alert_id: int | None, created_by: str,
                    reaches_low_water: bool, summary: str, detail: dict, items: list[dict]) -> RebalancePlan:
        plan = RebalancePlan(id=uuid.uuid4(), cell=cell, status=status, trigger=trigger, alert_id=alert_id,
                             created_by=created_by, reaches_low_water=reaches_low_water, summary=summary,
                             detail=detail)
        with self.Session() as s:
            s.add(plan)
            s.flush()
            for n, item in enumerate(items):
                s.add(RebalancePlanItem(plan_id=plan.id, ordinal=n, state="pending", note="", **item))
            s.commit()
        return plan

    def get_plan(self, plan_id) -> RebalancePlan:
        with self.Session() as s:
            plan = s.get(RebalancePlan, plan_uuid(plan_id))
        if plan is None:
            raise UnknownPlan(f"no plan {plan_id}", "list plans with `migrator rebalance plans`")
        return plan

    def plan_items(self, plan_id) -> list[RebalancePlanItem]:
        with self.Session() as s:
            return list(s.scalars(select(RebalancePlanItem).where(RebalancePlanItem.plan_id == plan_uuid(plan_id))
                                  .order_by(RebalancePlanItem.ordinal)))

    def plans(self, *, cell: str | None = None, statuses: Iterable[str] | None = None,
              limit: int = 50) -> list[RebalancePlan]:
        q = select(RebalancePlan).order_by(RebalancePlan.created_at.desc()).limit(limit)
        if cell is not None:
            q = q.where(RebalancePlan.cell == cell)
        if statuses:
            q = q.where(RebalancePlan.status.in_(list(statuses)))
        with self.Session() as s:
            return list(s.scalars(q))

    def latest_plan(self, cell: str, triggers: Iterable[str]) -> RebalancePlan | None:
        """The cell's most recent plan made by one of ``triggers`` (alert, tick, operator)."""
        with self.Session() as s:
            return s.scalars(select(RebalancePlan).where(RebalancePlan.cell == cell,
                                                         RebalancePlan.trigger.in_(list(triggers)))
                             .order_by(RebalancePlan.created_at.desc()).limit(1)).first()

    def firing_cells(self, alertnames: Iterable[str]) -> set[str]:
        """Cells whose latest capacity alert (of ``alertnames``) is firing, not resolved."""
        latest = (select(func.max(RebalanceAlert.id))
                  .where(RebalanceAlert.alertname.in_(list(alertnames)), RebalanceAlert.cell.is_not(None),
                         RebalanceAlert.state != "ignored")
                  .group_by(RebalanceAlert.cell))
        with self.Session() as s:
            return set(s.scalars(select(RebalanceAlert.cell).where(RebalanceAlert.id.in_(latest),
                                                                   RebalanceAlert.status == "firing")))

    def pending_items(self, plan_ids: Iterable | None = None) -> list[tuple[RebalancePlan, RebalancePlanItem]]:
        """Pending items of plans being applied, oldest plan first."""
        q = (select(RebalancePlan, RebalancePlanItem)
             .join(RebalancePlanItem, RebalancePlanItem.plan_id == RebalancePlan.id)
             .where(RebalancePlan.status == "applying", RebalancePlanItem.state == "pending")
             .order_by(RebalancePlan.created_at, RebalancePlanItem.ordinal))
        if plan_ids is not None:
            q = q.where(RebalancePlan.id.in_([plan_uuid(p) for p in plan_ids]))
        with self.Session() as s:
            return [(p, i) for p, i in s.execute(q)]

    def set_plan_status(self, plan_id, status: str, *, expect: Iterable[str] | None = None, **values: Any
                        ) -> RebalancePlan | None:
        conds = [RebalancePlan.id == plan_uuid(plan_id)]
        if expect is not None:
            conds.append(RebalancePlan.status.in_(list(expect)))
        with self.Session() as s:
            row = s.scalars(update(RebalancePlan).where(*conds)
                            .values(status=status, updated_at=func.now(), **values).returning(RebalancePlan)).first()
            s.commit()
            return row

    def supersede_open(self, cell: str) -> list[uuid.UUID]:
        """Open plans of a cell give way to a new one: their pending items will never start."""
        with self.Session() as s:
            ids = list(s.scalars(update(RebalancePlan)
                                 .where(RebalancePlan.cell == cell, RebalancePlan.status.in_(OPEN_PLAN_STATES))
                                 .values(status="superseded", updated_at=func.now()).returning(RebalancePlan.id)))
            if ids:
                s.execute(update(RebalancePlanItem)
                          .where(RebalancePlanItem.plan_id.in_(ids), RebalancePlanItem.state == "pending")
                          .values(state="superseded", note="superseded by a newer plan", updated_at=func.now()))
            s.commit()
            return ids

    def set_item(self, plan_id, ordinal: int, *, state: str, note: str = "", move_id=None,
                 expect: str = "pending") -> bool:
        with self.Session() as s:
            row = s.scalar(update(RebalancePlanItem)
                           .where(RebalancePlanItem.plan_id == plan_uuid(plan_id), RebalancePlanItem.ordinal == ordinal,
                                  RebalancePlanItem.state == expect)
                           .values(state=state, note=note, move_id=move_id, updated_at=func.now())
                           .returning(RebalancePlanItem.ordinal))
            s.commit()
            return row is not None

    def note_item(self, plan_id, ordinal: int, note: str) -> None:
        with self.Session() as s:
            s.execute(update(RebalancePlanItem).where(RebalancePlanItem.plan_id == plan_uuid(plan_id),
                                                      RebalancePlanItem.ordinal == ordinal)
                      .values(note=note, updated_at=func.now()))
            s.commit()

    def finish_plans(self) -> list[uuid.UUID]:
        """Plans being applied with no pending item left are done."""
        pending = select(RebalancePlanItem.plan_id).where(RebalancePlanItem.state == "pending")
        with self.Session() as s:
            ids = list(s.scalars(update(RebalancePlan)
                                 .where(RebalancePlan.status == "applying", RebalancePlan.id.not_in(pending))
                                 .values(status="done", updated_at=func.now()).returning(RebalancePlan.id)))
            s.commit()
            return ids

    @contextmanager
    def apply_lock(self) -> Iterator[None]:
        """One applier at a time across processes (a session-level advisory lock)."""
        with control_engine(self.dsn).connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": APPLY_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": APPLY_LOCK})
                conn.commit()

    # ------------------------------------------------------------------ pins
    def pin(self, organization_id: int, pinned_by: str, reason: str) -> bool:
        with self.Session() as s:
            row = s.scalar(pg_insert(OrganizationPin).values(organization_id=organization_id, pinned_by=pinned_by,
                                                             reason=reason)
                           .on_conflict_do_update(index_elements=[OrganizationPin.organization_id],
                                                  set_={"pinned_by": pinned_by, "reason": reason,
                                                        "pinned_at": func.now()})
                           .returning(OrganizationPin.organization_id))
            s.commit()
            return row is not None

    def unpin(self, organization_id: int) -> bool:
        with self.Session() as s:
            n = s.execute(delete(OrganizationPin).where(OrganizationPin.organization_id == organization_id)).rowcount
            s.commit()
            return bool(n)

    def pins(self) -> dict[int, OrganizationPin]:
        with self.Session() as s:
            return {p.organization_id: p for p in s.scalars(select(OrganizationPin))}

    # ------------------------------------------------------------------ pause
    def state(self) -> RebalancerState:
        with self.Session() as s:
            row = s.get(RebalancerState, 1)
            return row or RebalancerState(id=1, paused=False, changed_by="", reason="", changed_at=None)

    def set_paused(self, paused: bool, changed_by: str, reason: str) -> bool:
        """Set the switch; False when it was already so."""
        with self.Session() as s:
            before = s.scalar(select(RebalancerState.paused).where(RebalancerState.id == 1).with_for_update())
            s.execute(pg_insert(RebalancerState).values(id=1, paused=paused, changed_by=changed_by, reason=reason)
                      .on_conflict_do_update(index_elements=[RebalancerState.id],
                                             set_={"paused": paused, "changed_by": changed_by, "reason": reason,
                                                   "changed_at": func.now()}))
            s.commit()
            return bool(before) != paused
