"""The rebalancer at work: plans from the readings, applied through Operations within the guardrails.

- ``make_plan``: the planner over the cached readings; the plan and its reasons are recorded.
- ``apply`` (approval mode, `migrator rebalance apply`) / automatic after an alert: the plan is
  approved, supersedes the cell's older open plans, and its items start as moves while guardrail
  slots are free. Items that find no slot stay pending; ``tick`` (celery beat) starts them later.
- ``handle_alert``: a firing capacity alert, from the Celery task.
- ``tick`` also re-plans a cell that is still hot (its alert still firing) once its plans are done.

One live plan per cell, under alert storms too (docs/adr/0006-rebalancing-policy.md): plans are made
and superseded under one advisory lock, a plan only ever supersedes older ones (creation order), an
alert never supersedes a plan that is applying, and alerts and ticks make at most one plan per cell
per ``rebalance.plan_cooldown_s``: the rest of a storm is noted against the live plan
(``alert_absorbed``), without a plan or a reading of the cells.

Every decision is written to ``rebalance_decisions``.
"""

from __future__ import annotations

import datetime as dt
import logging

from migrator.config import Settings
from migrator.errors import BrokerUnavailable, GuardrailExceeded, MigratorError
from migrator.health.signals import Signal
from migrator.moves import throttle
from migrator.moves.admission import Guardrails
from migrator.moves.operations import Operations
from migrator.moves.store import MoveStore
from migrator.rebalance.planner import Plan, human_bytes, is_hot, plan_cell, projected
from migrator.rebalance.policy import FleetView, fleet_view
from migrator.rebalance.readings import refresh_readings
from migrator.rebalance.store import InvalidPlanState, RebalanceStore

log = logging.getLogger(__name__)
ACTOR = "rebalancer"


class Rebalancer:
    def __init__(self, settings: Settings, *, ops: Operations | None = None, dispatcher=None):
        self.settings = settings
        self.store = RebalanceStore(settings.control_dsn)
        self._ops = ops
        self._dispatcher = dispatcher

    @property
    def ops(self) -> Operations:
        if self._ops is None:
            self._ops = Operations(self.settings, dispatcher=self._dispatcher)
        return self._ops

    # ------------------------------------------------------------------ readings
    def refresh(self, cells: list[str] | None = None) -> list[dict]:
        return refresh_readings(self.settings, cells, topology=self._ops.topology if self._ops else None)

    def readings_age_s(self) -> float | None:
        oldest = self.store.oldest_reading_at()
        if oldest is None:
            return None
        return (self.store.now() - oldest).total_seconds()

    def ensure_fresh(self) -> bool:
        """Re-measure when the cache is missing or older than rebalance.readings_max_age_s."""
        age = self.readings_age_s()
        if age is None or age > self.settings.rebalance.readings_max_age_s or \
                {r.cell for r in self.store.cell_readings()} < set(self.settings.cells):
            self.refresh()
            return True
        return False

    # ------------------------------------------------------------------ planning
    def compute(self, cell: str, view: FleetView | None = None) -> Plan:
        """The plan for one cell, from the cache (nothing recorded)."""
        self.settings.cell(cell)
        view = view or fleet_view(self.settings, self.store)
        r = self.settings.rebalance
        return plan_cell(cell, view.cells, view.orgs.get(cell, []), in_flight=view.in_flight,
                         max_moves=r.max_plan_moves, max_window_s=r.max_write_window_s)

    def hot_cells(self, view: FleetView | None = None) -> list[str]:
        view = view or fleet_view(self.settings, self.store)
        return [c.name for c in view.cells if is_hot(c)]

    def make_plan(self, cell: str, *, trigger: str = "operator", alert_id: int | None = None,
                  actor: str = ACTOR, status: str | None = None) -> tuple[object, Plan]:
        """Compute and record a plan. ``status``: default awaiting_approval (or applying for an alert
        or a tick in auto mode); a plan without items is recorded as ``empty``. The cell's older plans
        awaiting approval are superseded (one live plan per cell); one that is applying is not."""
        with self.store.apply_lock():
            return self._make_plan(cell, trigger=trigger, alert_id=alert_id, actor=actor, status=status)

    def _make_plan(self, cell: str, *, trigger: str, alert_id: int | None, actor: str,
                   status: str | None) -> tuple[object, Plan]:
        """make_plan's work; the caller holds the apply lock."""
        view = fleet_view(self.settings, self.store)
        plan = self.compute(cell, view)
        if status is None:
            status = "applying" if trigger in ("alert", "tick") and self.settings.rebalance.approval == "auto" \
                else "awaiting_approval"
        if not plan.items:
            status = "empty"
        age = (view.now - view.readings_at).total_seconds() if view.readings_at else None
        detail = plan.as_dict()
        detail["readings_age_s"] = None if age is None else round(age, 1)
        row = self.store.create_plan(
            cell=cell, status=status, trigger=trigger, alert_id=alert_id, created_by=actor,
            reaches_low_water=plan.reaches_low_water, summary=plan.summary, detail=detail,
            items=[{"organization_id": i.organization_id, "source_cell": i.source, "target_cell": i.target,
                    "bytes": i.bytes, "rows": i.rows, "window_s": i.window_s, "reason": i.reason} for i in plan.items],
        )
        kind = "plan_made" if plan.items else "plan_empty"
        self.store.decide(kind, f"plan {row.id} ({status}): {plan.summary}", cell=cell, plan_id=row.id,
                          alert_id=alert_id, actor=actor,
                          detail={"goal": plan.goal, "items": [i.organization_id for i in plan.items],
                                  "bytes_moved": plan.bytes_moved, "readings_age_s": detail["readings_age_s"]})
        for s in plan.skipped[:50]:
            self.store.decide("org_skipped", f"organization {s['organization_id']} not considered: {s['reason']}",
                              cell=cell, organization_id=s["organization_id"], plan_id=row.id, alert_id=alert_id,
                              actor=actor)
        if len(plan.skipped) > 50:
            self.store.decide("org_skipped", f"{len(plan.skipped) - 50} more organizations not considered "
                              "(see the plan's detail)", cell=cell, plan_id=row.id, actor=actor)
        for item in plan.items:
            self.store.decide("org_chosen", f"organization {item.organization_id} -> {item.target}: {item.reason}",
                              cell=cell, organization_id=item.organization_id, plan_id=row.id, alert_id=alert_id,
                              actor=actor)
        if status in ("awaiting_approval", "applying"):
            for other in self.store.plans(cell=cell, statuses=("awaiting_approval",), limit=1000):
                if other.id != row.id and other.created_at <= row.created_at:
                    self._supersede(other, row.id, actor)
        return row, plan

    # ------------------------------------------------------------------ applying
    def apply(self, plan_id, actor: str) -> dict:
        """Approve a plan (awaiting_approval -> applying) and start what the guardrails allow."""
        plan = self.store.get_plan(plan_id)
        if plan.status == "applying":
            return self.advance([plan.id], actor=actor)
        if plan.status != "awaiting_approval":
            raise InvalidPlanState(f"plan {plan.id} is {plan.status}; only a plan awaiting approval can be applied",
                                   "make a new one with `migrator rebalance plan --cell " + plan.cell + "`")
        self.approve(plan, actor)
        return self.advance([plan.id], actor=actor)

    def approve(self, plan, actor: str) -> None:
        """awaiting_approval -> applying; the cell's older open plans (an applying one too: an operator's
        word) are superseded. A plan never supersedes a newer one: approving an older plan is refused."""
        with self.store.apply_lock():
            others = [p for p in self.store.plans(cell=plan.cell, statuses=("awaiting_approval", "applying"),
                                                  limit=1000) if p.id != plan.id]
            newer = [p for p in others if p.created_at > plan.created_at]
            if newer:
                raise InvalidPlanState(f"plan {plan.id} is older than plan {newer[0].id} ({newer[0].status}) of "
                                       f"{plan.cell}; a plan never replaces a newer one",
                                       f"apply the newer plan, or make a new one: migrator rebalance plan --cell "
                                       f"{plan.cell}")
            updated = self.store.set_plan_status(plan.id, "applying", expect=("awaiting_approval",),
                                                 approved_by=actor, approved_at=dt.datetime.now(dt.UTC))
            if updated is None:
                raise InvalidPlanState(f"plan {plan.id} changed while you asked", "see `migrator rebalance plans`")
            for other in sorted(others, key=lambda p: p.created_at):
                self._supersede(other, plan.id, actor)
        self.store.decide("plan_approved", f"plan {plan.id} approved by {actor}", cell=plan.cell, plan_id=plan.id,
                          actor=actor)

    def _supersede(self, other, by, actor: str) -> None:
        if self.store.set_plan_status(other.id, "superseded", expect=("awaiting_approval", "applying")) is None:
            return
        for item in self.store.plan_items(other.id):
            if item.state == "pending":
                self.store.set_item(other.id, item.ordinal, state="superseded", note=f"superseded by plan {by}")
        self.store.decide("plan_superseded", f"plan {other.id} superseded by plan {by}", cell=other.cell,
                          plan_id=other.id, actor=actor)

    def advance(self, plan_ids=None, actor: str = ACTOR) -> dict:
        """Start pending items of plans being applied, within the guardrails (one applier at a time)."""
        started, deferred, skipped = [], [], []
        state = self.store.state()
        if state.paused:
            return {"paused": True, "started": [], "deferred": [], "skipped": []}
        with self.store.apply_lock():
            pending = self.store.pending_items(plan_ids)
            if pending:
                view = fleet_view(self.settings, self.store)
                rails = Guardrails.from_moves(self.settings, view.active_moves)
                loads = {k: list(v) for k, v in projected(view.cells, view.in_flight).items()}
                cells = {c.name: c for c in view.cells}
                moving = {m.organization_id for m in view.active_moves}
                orgs = {o.organization_id: o for lst in view.orgs.values() for o in lst}
                for plan, item in pending:
                    outcome = self._start_item(plan, item, rails, loads, cells, moving, orgs, actor)
                    {"started": started, "deferred": deferred, "skipped": skipped}[outcome[0]].append(
                        {"plan_id": str(plan.id), "organization_id": item.organization_id, **outcome[1]})
            for done in self.store.finish_plans():
                self.store.decide("plan_done", f"plan {done}: every item started or skipped", plan_id=done,
                                  cell=None, actor=actor)
        return {"paused": False, "started": started, "deferred": deferred, "skipped": skipped}

    def _start_item(self, plan, item, rails: Guardrails, loads, cells, moving, orgs, actor) -> tuple[str, dict]:
        org, source, target = item.organization_id, item.source_cell, item.target_cell
        common = {"cell": plan.cell, "organization_id": org, "plan_id": plan.id, "alert_id": plan.alert_id,
                  "actor": actor}

        def skip(why: str) -> tuple[str, dict]:
            if self.store.set_item(plan.id, item.ordinal, state="skipped", note=why):
                self.store.decide("move_skipped", f"organization {org} {source} -> {target} not started: {why}",
                                  **common)
            return "skipped", {"reason": why}

        why = rails.why_not(source, target)
        if why:
            note = f"waiting for a free slot: {why}"
            if item.note != note:  # log a deferral once, not at every tick
                self.store.note_item(plan.id, item.ordinal, note)
                self.store.decide("move_deferred", f"organization {org} {source} -> {target} waits: {why}", **common)
            return "deferred", {"reason": why}
        held = self._health_stop(source, target)
        if held is not None:  # a cell's health indicators say stop: start it once they clear
            note = f"waiting for the cells' health: {held.indicator} on {held.cell}"
            if item.note != note:
                self.store.note_item(plan.id, item.ordinal, note)
                self.store.decide("move_deferred", f"organization {org} {source} -> {target} waits: "
                                  f"{held.reason} says stop", **common)
            return "deferred", {"reason": held.reason}
        o = orgs.get(org)
        if org in moving:
            return skip("it is already moving")
        if o is not None and o.pinned:
            return skip(f"it was pinned ({o.note})")
        if o is not None and o.cooling:
            return skip(f"it is cooling down ({o.note})")
        t = cells.get(target)
        if t is None or not t.accepts:
            return skip(f"target {target} does not accept organizations now" + (f" ({t.note})" if t else ""))
        th = t.thresholds
        if th.high_bytes is not None and loads[target][0] + item.bytes > th.high_bytes:
            return skip(f"target {target} would go above its high-water mark ({human_bytes(loads[target][0])} + "
                        f"{human_bytes(item.bytes)} > {human_bytes(th.high_bytes)})")
        if th.high_orgs is not None and loads[target][1] + 1 > th.high_orgs:
            return skip(f"target {target} would hold more than {th.high_orgs} organizations")
        try:
            route = self.ops.topology.classify(org)
            if route.cell != source:
                return skip(f"it now lives in {route.cell}, not {source}")
            move = self.ops.request_move(org, target, actor=actor,
                                         reason=f"rebalance plan {plan.id} for {plan.cell}: {item.reason}")
        except GuardrailExceeded as exc:  # an operator's move took the slot meanwhile: wait for the next one
            self.store.note_item(plan.id, item.ordinal, f"waiting for a free slot: {exc.message}")
            return "deferred", {"reason": exc.message}
        except BrokerUnavailable as exc:  # recorded; the reconciler sends it
            move = self.ops.store.get(exc.extra["move_id"])
        except MigratorError as exc:
            return skip(f"{exc.code}: {exc.message}")
        self.store.set_item(plan.id, item.ordinal, state="started", move_id=move.id, note="")
        self.store.decide("move_started", f"move {move.id}: organization {org} {source} -> {target} "
                          f"({human_bytes(item.bytes)}, estimated write window {item.window_s:.1f} s)",
                          move_id=move.id, **common)
        rails.take(source, target)
        moving.add(org)
        for cell, sign in ((source, -1), (target, 1)):
            if cell in loads:
                loads[cell][0] += sign * item.bytes
                loads[cell][1] += sign
        return "started", {"move_id": str(move.id)}

    def _health_stop(self, source: str, target: str):
        """The reading that says stop for the source or target cell, or None (docs/adr/0019)."""
        if not self.settings.health.enabled or source not in self.settings.cells or target not in self.settings.cells:
            return None
        verdict = throttle.read(self.settings, [source, target])
        return verdict.worst if verdict.signal is Signal.STOP else None

    # ------------------------------------------------------------------ alerts
    def handle_alert(self, alert_id: int) -> dict:
        """A firing capacity alert: plan for its cell and (auto mode) start the plan."""
        alert = self.store.claim_alert(alert_id)
        if alert is None:
            return {"alert_id": alert_id, "result": "already handled"}
        cell = alert.cell
        common = {"cell": cell, "alert_id": alert_id}
        try:
            result = self._handle(alert_id, cell, common)
        except BaseException:
            self.store.set_alert_state(alert_id, "received")  # a retry (or the tick) handles it again
            raise
        self.store.set_alert_state(alert_id, "handled")
        return result

    def _handle(self, alert_id: int, cell: str, common: dict) -> dict:
        state = self.store.state()
        if state.paused:
            self.store.decide("alert_skipped", f"rebalancer is paused (by {state.changed_by or '?'}"
                              + (f": {state.reason}" if state.reason else "") + "): no plan made", **common)
            return {"alert_id": alert_id, "result": "paused"}
        # Most alerts of a storm end here, before any reading of the cells (re-checked under the lock).
        refreshed = self._live_plan(cell) is None and self.ensure_fresh()
        with self.store.apply_lock():
            live = self._live_plan(cell)
            if live is not None:
                plan_id, why = live
                self.store.decide("alert_absorbed", f"no new plan: {why}", plan_id=plan_id, **common)
                return {"alert_id": alert_id, "result": "absorbed", "plan_id": str(plan_id), "reason": why}
            row, plan = self._make_plan(cell, trigger="alert", alert_id=alert_id, actor=ACTOR, status=None)
        result = {"alert_id": alert_id, "plan_id": str(row.id), "status": row.status, "refreshed": refreshed,
                  "summary": plan.summary}
        if row.status == "applying":
            result["applied"] = self.advance([row.id])
        elif row.status == "awaiting_approval":
            self.store.decide("plan_waiting", f"plan {row.id} waits for approval: "
                              f"migrator rebalance apply {row.id}", plan_id=row.id, **common)
        return result

    def _live_plan(self, cell: str) -> tuple[object, str] | None:
        """(plan id, why) when an alert or the tick must not plan for ``cell`` now: a plan is applying
        (never superseded by an alert), or one was made by an alert or the tick within the plan cooldown."""
        applying = self.store.plans(cell=cell, statuses=("applying",), limit=1)
        if applying:
            return applying[0].id, f"plan {applying[0].id} is applying for {cell}"
        cooldown = self.settings.rebalance.plan_cooldown_s
        last = self.store.latest_plan(cell, ("alert", "tick")) if cooldown else None
        if last is not None:
            age = (self.store.now() - last.created_at).total_seconds()
            if age < cooldown:
                return last.id, (f"plan {last.id} ({last.status}) was made for {cell} {age:.0f} s ago; one plan per "
                                 f"cell per {cooldown:g} s (rebalance.plan_cooldown_s)")
        return None

    # ------------------------------------------------------------------ periodic
    def tick(self, enqueue_alert=None, received_s: float = 300.0, handling_s: float | None = None) -> dict:
        """Beat: re-enqueue alerts whose task was lost (never claimed after ``received_s``, or claimed
        longer ago than the task time limit); re-plan cells still hot; start pending items whose slot
        is free."""
        requeued = []
        if enqueue_alert is not None:
            handling_s = handling_s or float(self.settings.celery.task_time_limit_s) + 60.0
            for a in self.store.stale_alerts(received_s, handling_s):
                enqueue_alert(a.id, a.cell)
                requeued.append(a.id)
                log.warning("rebalancer: alert %s (%s) made no progress: re-enqueued", a.id, a.cell)
        replanned = self.replan_hot()
        return {"requeued_alerts": requeued, "replanned": replanned, **self.advance()}

    def replan_hot(self) -> list[dict]:
        """A plan for every cell whose capacity alert is still firing, that the readings still show hot,
        with no live plan and no plan within the plan cooldown (its last plan is done and it is still hot)."""
        if self.store.state().paused:
            return []
        firing = self.store.firing_cells(self.settings.rebalance.alertnames) & set(self.settings.cells)
        candidates = [c for c in sorted(firing) if self._live_plan(c) is None]
        if not candidates:
            return []
        self.ensure_fresh()
        hot = set(self.hot_cells())
        out = []
        for cell in candidates:
            if cell not in hot:
                continue
            with self.store.apply_lock():
                if self._live_plan(cell) is not None:
                    continue
                row, plan = self._make_plan(cell, trigger="tick", alert_id=None, actor=ACTOR, status=None)
            self.store.decide("cell_still_hot", f"{cell} is still hot and its alert still firing: plan {row.id} "
                              f"({row.status})", cell=cell, plan_id=row.id)
            out.append({"cell": cell, "plan_id": str(row.id), "status": row.status, "summary": plan.summary})
        return out

    # ------------------------------------------------------------------ switches
    def pause(self, actor: str, reason: str = "") -> bool:
        changed = self.store.set_paused(True, actor, reason)
        if changed:
            self.store.decide("paused", "rebalancer paused" + (f": {reason}" if reason else ""), actor=actor)
        return changed

    def resume(self, actor: str, reason: str = "") -> bool:
        changed = self.store.set_paused(False, actor, reason)
        if changed:
            self.store.decide("resumed", "rebalancer resumed" + (f": {reason}" if reason else ""), actor=actor)
        return changed

    def pin(self, organization_id: int, actor: str, reason: str = "") -> None:
        self.store.pin(organization_id, actor, reason)
        self.store.decide("pinned", f"organization {organization_id} pinned" + (f": {reason}" if reason else ""),
                          organization_id=organization_id, actor=actor)

    def unpin(self, organization_id: int, actor: str) -> bool:
        removed = self.store.unpin(organization_id)
        if removed:
            self.store.decide("unpinned", f"organization {organization_id} unpinned",
                              organization_id=organization_id, actor=actor)
        return removed

    def status(self) -> dict:
        state = self.store.state()
        age = self.readings_age_s()
        r = self.settings.rebalance
        return {
            "paused": bool(state.paused), "changed_by": state.changed_by or None, "reason": state.reason or None,
            "changed_at": state.changed_at.isoformat() if state.changed_at else None,
            "approval": r.approval, "max_moves_per_cell": r.max_moves_per_cell, "max_moves_total": r.max_moves_total,
            "cooldown_hours": r.cooldown_hours, "plan_cooldown_s": r.plan_cooldown_s,
            "readings_age_s": None if age is None else round(age, 1),
            "open_plans": len(self.store.plans(statuses=("awaiting_approval", "applying"))),
            "pins": len(self.store.pins()),
        }


# ---------------------------------------------------------------------- plain data


def _iso(v):
    return v.isoformat() if isinstance(v, dt.datetime) else v


def plan_as_dict(store: RebalanceStore, row) -> dict:

    items = []
    move_store = None
    for i in store.plan_items(row.id):
        entry = {"ordinal": i.ordinal, "organization_id": i.organization_id, "source": i.source_cell,
                 "target": i.target_cell, "bytes": i.bytes, "rows": i.rows, "window_s": i.window_s,
                 "reason": i.reason, "state": i.state, "note": i.note,
                 "move_id": str(i.move_id) if i.move_id else None, "move_state": None}
        if i.move_id is not None:
            if move_store is None:
                move_store = MoveStore(store.dsn)
            try:
                entry["move_state"] = move_store.get(i.move_id).state
            except MigratorError:
                entry["move_state"] = "unknown"
        items.append(entry)
    detail = row.detail or {}
    return {
        "id": str(row.id), "cell": row.cell, "status": row.status, "trigger": row.trigger, "alert_id": row.alert_id,
        "created_by": row.created_by, "created_at": _iso(row.created_at), "approved_by": row.approved_by,
        "approved_at": _iso(row.approved_at), "reaches_low_water": row.reaches_low_water, "summary": row.summary,
        "goal": detail.get("goal"), "bytes_moved": detail.get("bytes_moved"), "before": detail.get("before"),
        "after": detail.get("after"), "low_water": detail.get("low_water"), "targets": detail.get("targets", []),
        "skipped": detail.get("skipped", []), "readings_age_s": detail.get("readings_age_s"), "items": items,
    }


def decision_as_dict(d) -> dict:
    return {"id": d.id, "at": _iso(d.at), "kind": d.kind, "cell": d.cell, "organization_id": d.organization_id,
            "plan_id": str(d.plan_id) if d.plan_id else None, "alert_id": d.alert_id,
            "move_id": str(d.move_id) if d.move_id else None, "actor": d.actor, "message": d.message,
            "detail": d.detail}
