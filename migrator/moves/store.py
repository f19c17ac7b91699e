"""Move state in the control database: every write fenced by the move's token.

All state changes are single SQL statements that compare before they set (the step, the token,
the lease), so a stale worker, a duplicated message or two workers on one step can never move a
move backwards or twice. The broker only carries wake-up calls; this is the source of truth.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Text, and_, case, delete, func, insert, literal, null, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from migrator.control.engine import session_factory
from migrator.control.models import Move, MoveEvent, MoveUnit
from migrator.errors import InvalidMoveState, LeaseLost, MoveConflict, StaleToken, UnknownMove
from migrator.moves import workflow as wf


def new_token() -> str:
    return uuid.uuid4().hex


MIN_PREFIX = 4
MAX_CANDIDATES = 5
_HEX_PREFIX = re.compile(r"[0-9a-f-]+")


def _uuid_or_none(move_id) -> uuid.UUID | None:
    if isinstance(move_id, uuid.UUID):
        return move_id
    try:
        return uuid.UUID(str(move_id))
    except ValueError:
        return None


def _uuid(move_id) -> uuid.UUID:
    if isinstance(move_id, uuid.UUID):
        return move_id
    try:
        return uuid.UUID(str(move_id))
    except ValueError:
        raise UnknownMove(f"{move_id!r} is not a move id", "move ids look like 8c1f…; see `migrator status`") from None


class MoveStore:
    def __init__(self, control_dsn: str):
        self.Session = session_factory(control_dsn)

    # ---------------------------------------------------------------- moves
    def create(self, *, organization_id: int, source: str, target: str, requested_by: str, reason: str,
               strategy: str = "frozen", plan: dict | None = None, admission=None) -> Move:
        """Record a queued move. ``admission(session)`` runs first in the same transaction (the
        guardrails, migrator/moves/admission.py): it raises to refuse, or returns the guardrail a
        forced move exceeds, which the history keeps as a ``guardrail_overridden`` event."""
        move = Move(
            id=uuid.uuid4(), organization_id=organization_id, source_cell=source, target_cell=target,
            strategy=strategy, state=wf.QUEUED, step=wf.FIRST_STEP, token=new_token(), attempt=1,
            requested_by=requested_by, reason=reason, plan=plan or {}, report={},
        )
        with self.Session() as s:
            try:
                overridden = admission(s) if admission is not None else None
                s.add(move)
                s.flush()
                s.add(MoveEvent(move_id=move.id, step=None, event="requested", actor=requested_by,
                                message=f"move of organization {organization_id} {source} -> {target}: {reason}",
                                detail={"strategy": strategy}))
                if overridden:
                    s.add(MoveEvent(move_id=move.id, step=None, event="guardrail_overridden", actor=requested_by,
                                    message=f"started with force despite {overridden}: {reason}",
                                    detail={"guardrail": overridden, "force": True}))
                s.commit()
            except IntegrityError as exc:
                s.rollback()
                if "uq_moves_active_organization" not in str(exc.orig):
                    raise
                other = self.active_for(organization_id)
                which = f"move {other.id} ({other.state}, step {other.step})" if other else "another move"
                raise MoveConflict(
                    f"organization {organization_id} already has an active move: {which}",
                    "wait for it to finish, or `migrator abort` it first",
                ) from None
        return move

    def get(self, move_id) -> Move:
        """The move with this id, or with the one id that starts with this prefix (as git takes commits)."""
        key = _uuid_or_none(move_id)
        if key is None:
            key = self.resolve(move_id)
        with self.Session() as s:
            move = s.get(Move, key)
        if move is None:
            raise UnknownMove(f"no move {move_id}", "list moves with `migrator status`")
        return move

    def resolve(self, move_id) -> uuid.UUID:
        """A full move id from an id or a unique prefix of one (at least 4 hex digits, dashes optional)."""
        key = _uuid_or_none(move_id)
        if key is not None:
            return key
        text_id = str(move_id).strip().lower()
        if len(text_id.replace("-", "")) < MIN_PREFIX or not _HEX_PREFIX.fullmatch(text_id):
            raise UnknownMove(f"{move_id!r} is not a move id",
                              f"give a move id or at least {MIN_PREFIX} of its first hex digits; see `migrator status`")
        with self.Session() as s:
            found = list(s.scalars(select(Move).where(func.cast(Move.id, Text).like(text_id + "%"))
                                   .order_by(Move.created_at.desc()).limit(MAX_CANDIDATES + 1)))
        if not found:
            raise UnknownMove(f"no move id starts with {text_id!r}", "list moves with `migrator status`")
        if len(found) > 1:
            shown = ", ".join(f"{m.id} (organization {m.organization_id}, {m.state})" for m in found[:MAX_CANDIDATES])
            more = " and more" if len(found) > MAX_CANDIDATES else ""
            raise UnknownMove(f"{text_id!r} is ambiguous: it starts {len(found)}{'+' if more else ''} move ids: "
                              f"{shown}{more}", "give more digits of the id")
        return found[0].id

    def active_for(self, organization_id: int) -> Move | None:
        with self.Session() as s:
            return s.scalars(
                select(Move).where(Move.organization_id == organization_id, Move.state.in_(wf.ACTIVE_STATES))
            ).first()

    def list(self, *, states: Iterable[str] | None = None, cell: str | None = None,
             organization_id: int | None = None, limit: int = 200) -> list[Move]:
        q = select(Move).order_by(Move.created_at.desc()).limit(limit)
        if states:
            q = q.where(Move.state.in_(list(states)))
        if cell:
            q = q.where(or_(Move.source_cell == cell, Move.target_cell == cell))
        if organization_id is not None:
            q = q.where(Move.organization_id == organization_id)
        with self.Session() as s:
            return list(s.scalars(q))

    def _update(self, move_id, token: str | None, values: dict, *extra) -> Move | None:
        """One fenced UPDATE; returns the updated move or None when the fence did not hold."""
        conds = [Move.id == _uuid(move_id), *extra]
        if token is not None:
            conds.append(Move.token == token)
        values = {**values, "updated_at": func.now()}
        with self.Session() as s:
            row = s.scalars(update(Move).where(and_(*conds)).values(**values).returning(Move)).first()
            s.commit()
            return row

    def require(self, move_id, token: str) -> Move:
        move = self.get(move_id)
        if move.token != token:
            raise StaleToken(
                f"move {move.id}: token {token[:8]}… is superseded by attempt {move.attempt}",
                "this worker acts for an old attempt and stops; the current attempt carries on",
            )
        return move

    def start(self, move_id, token: str) -> Move | None:
        """queued -> running (idempotent)."""
        return self._update(move_id, token, {"state": wf.RUNNING, "heartbeat_at": func.now()},
                            Move.state.in_([wf.QUEUED, wf.RUNNING]))

    def claim_step(self, move_id, step: str, token: str, owner: str, ttl_s: float) -> Move | None:
        """Take the step's lease. None if the move is elsewhere, fenced, or another worker holds it."""
        now = func.now()
        until = now + dt.timedelta(seconds=ttl_s)
        return self._update(
            move_id, token,
            {"lease_owner": owner, "lease_until": until, "heartbeat_at": now,
             "step_started_at": func.coalesce(Move.step_started_at, now)},
            Move.step == step, Move.state == wf.RUNNING,
            or_(Move.lease_owner.is_(None), Move.lease_owner == owner, Move.lease_until < now),
        )

    def release_step(self, move_id, token: str, owner: str) -> None:
        self._update(move_id, token, {"lease_owner": None, "lease_until": None}, Move.lease_owner == owner)

    def heartbeat(self, move_id, token: str, owner: str | None = None, ttl_s: float | None = None) -> None:
        """Mark the move alive (and extend ``owner``'s step lease); StaleToken if this attempt was
        superseded, InvalidMoveState if the move stopped."""
        values: dict[str, Any] = {"heartbeat_at": func.now()}
        if owner is not None and ttl_s is not None:
            values["lease_until"] = case(
                (Move.lease_owner == owner, func.now() + dt.timedelta(seconds=ttl_s)), else_=Move.lease_until)
        row = self._update(move_id, token, values, Move.state.in_([wf.RUNNING, wf.ABORTING]))
        if row is None:
            move = self.get(move_id)
            if move.token != token:
                self.require(move_id, token)
            raise InvalidMoveState(f"move {move.id} is {move.state}", "the worker stops here")

    def advance(self, move_id, token: str, from_step: str) -> Move | None:
        """Compare-and-set the step forward. Only one caller wins; None for the others."""
        strategy = self.get(move_id).strategy
        nxt = wf.next_step(strategy, from_step)
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "step_started_at": None,
                                  "heartbeat_at": func.now()}
        if nxt is None:
            values.update(state=wf.COMPLETED, completed_at=func.now())
        else:
            values.update(step=nxt)
        return self._update(move_id, token, values, Move.step == from_step, Move.state == wf.RUNNING)

    def pause(self, move_id, token: str) -> Move | None:
        return self._update(move_id, token, {"state": wf.PAUSED}, Move.state.in_([wf.RUNNING, wf.QUEUED]))

    def set_fields(self, move_id, token: str, **values) -> Move | None:
        return self._update(move_id, token, values)

    def merge_json(self, move_id, token: str, column: str, data: dict) -> None:
        col = getattr(Move, column)
        self._update(move_id, token, {column: col.op("||")(_jsonb(data))})

    # ---------------------------------------------------------------- throttle
    def set_throttle(self, move_id, token: str, throttle: dict) -> bool:
        """Record the health reading that holds the move's units back (and touch the heartbeat: a
        throttled move is not stale). True when it is new (another cell, indicator or signal than the
        one recorded), so the caller writes one history event per throttle, not one per unit."""
        key = (throttle.get("cell"), throttle.get("indicator"), throttle.get("signal"))
        with self.Session() as s:
            prev = s.scalars(select(Move.throttle).where(Move.id == _uuid(move_id), Move.token == token)
                             .with_for_update()).first()
            new = prev is None or (prev.get("cell"), prev.get("indicator"), prev.get("signal")) != key
            since = dt.datetime.now(dt.UTC).isoformat() if new else prev.get("since")
            done = s.execute(update(Move).where(Move.id == _uuid(move_id), Move.token == token,
                                                Move.state.in_([wf.RUNNING, wf.COMPLETED]))
                             .values(throttle={**throttle, "since": since}, heartbeat_at=func.now(),
                                     updated_at=func.now()))
            s.commit()
            return new and done.rowcount > 0

    def clear_throttle(self, move_id, token: str, *, keep=None) -> dict | None:
        """The throttle that was recorded (now lifted), or None when there was none (or ``keep(recorded)``
        says it still holds: another unit's table-specific reading)."""
        with self.Session() as s:
            prev = s.scalars(select(Move.throttle).where(Move.id == _uuid(move_id), Move.token == token,
                                                         Move.throttle.is_not(None)).with_for_update()).first()
            if prev is None or (keep is not None and keep(prev)):
                return None
            s.execute(update(Move).where(Move.id == _uuid(move_id)).values(throttle=null(), updated_at=func.now()))
            s.commit()
            return prev

    def fail(self, move_id, token: str, step: str, message: str, code: str, *, state: str = wf.FAILED) -> Move | None:
        row = self._update(move_id, token, {"state": state, "error": message, "error_code": code,
                                             "lease_owner": None, "lease_until": None},
                           Move.state.in_([wf.RUNNING, wf.QUEUED]))
        if row is not None:
            self.event(move_id, step, "failed", message, {"code": code})
        return row

    def rotate_token(self, move_id, old_token: str, new: str, *, state: str, step: str | None = None,
                     clear_error: bool = True) -> Move | None:
        """A new attempt: a new token fences every worker of the old one (the old token joins
        ``previous_tokens``, so a freeze an earlier attempt left behind is still recognised as ours)."""
        values: dict[str, Any] = {"token": new, "attempt": Move.attempt + 1, "state": state,
                                  "lease_owner": None, "lease_until": None, "heartbeat_at": func.now(),
                                  "previous_tokens": func.array_append(Move.previous_tokens, old_token)}
        if step is not None:
            values["step"] = step
            values["step_started_at"] = None
        if clear_error:
            values.update(error=None, error_code=None)
        row = self._update(move_id, old_token, values)
        if row is not None:
            # The old attempt's unit leases go with it (its executions are fenced by the token at their
            # next write), so the new attempt's units are claimable at once, not after lease_ttl_s.
            with self.Session() as s:
                s.execute(update(MoveUnit).where(MoveUnit.move_id == _uuid(move_id), MoveUnit.lease_owner.is_not(None))
                          .values(lease_owner=None, lease_until=None))
                s.commit()
        return row

    def record_catch_up_round(self, move_id, token: str, *, snapshot: str, keys: int, blobs: int, seconds: float,
                              keys_per_s: float | None) -> None:
        """One round of the change log applied: the new position (control state, fenced) and the
        round's figures in the report's ``catch_up`` (for humans)."""
        move = self.require(move_id, token)
        stats = dict((move.report or {}).get("catch_up") or {})
        stats.update(rounds=int(stats.get("rounds", 0)) + 1, last_keys=keys, last_round_s=round(seconds, 3),
                     keys_per_s=keys_per_s, keys_applied=int(stats.get("keys_applied", 0)) + keys,
                     blobs_copied=int(stats.get("blobs_copied", 0)) + blobs)
        values: dict[str, Any] = {"capture_snapshot": snapshot,
                                  "report": Move.report.op("||")(_jsonb({"catch_up": stats}))}
        if keys_per_s:
            values["catch_up_keys_per_s"] = keys_per_s
        self._update(move_id, token, values)

    def stale(self, older_than_s: float, states: Iterable[str], *, in_window: bool | None = None) -> list[Move]:
        """Moves in ``states`` whose heartbeat is older than ``older_than_s``. ``in_window``: only moves
        whose write window is open (True), or only the others (False)."""
        cutoff = func.now() - dt.timedelta(seconds=older_than_s)
        q = select(Move).where(Move.state.in_(list(states)), Move.heartbeat_at < cutoff)
        window_open = and_(Move.frozen_at.is_not(None), Move.unfrozen_at.is_(None), Move.freeze_lifted.is_(False))
        if in_window is True:
            q = q.where(window_open)
        elif in_window is False:
            q = q.where(~window_open)
        with self.Session() as s:
            return list(s.scalars(q))

    def touch(self, move_id) -> None:
        with self.Session() as s:
            s.execute(update(Move).where(Move.id == _uuid(move_id)).values(heartbeat_at=func.now()))
            s.commit()

    # ---------------------------------------------------------------- history
    def event(self, move_id, step: str | None, event: str, message: str = "", detail: dict | None = None,
              actor: str = "worker") -> None:
        with self.Session() as s:
            s.execute(insert(MoveEvent).values(move_id=_uuid(move_id), step=step, event=event, actor=actor,
                                               message=message, detail=detail or {}))
            s.commit()

    def events(self, move_id) -> list[MoveEvent]:
        with self.Session() as s:
            return list(s.scalars(select(MoveEvent).where(MoveEvent.move_id == _uuid(move_id))
                                  .order_by(MoveEvent.id)))

    # ---------------------------------------------------------------- units
    def ensure_units(self, move_id, token: str, step: str, units: list[dict]) -> None:
        """Record a step's units once (a second planner run adds nothing)."""
        self.require(move_id, token)
        if not units:
            return
        rows = [{"move_id": _uuid(move_id), "step": step, **u} for u in units]
        with self.Session() as s:
            s.execute(pg_insert(MoveUnit).values(rows).on_conflict_do_nothing())
            s.commit()

    def units(self, move_id, step: str | None = None) -> list[MoveUnit]:
        q = select(MoveUnit).where(MoveUnit.move_id == _uuid(move_id)).order_by(MoveUnit.step, MoveUnit.ordinal,
                                                                                 MoveUnit.unit)
        if step:
            q = q.where(MoveUnit.step == step)
        with self.Session() as s:
            return list(s.scalars(q))

    def has_units(self, move_id, step: str) -> bool:
        with self.Session() as s:
            return bool(s.scalar(select(func.count()).select_from(MoveUnit)
                                 .where(MoveUnit.move_id == _uuid(move_id), MoveUnit.step == step)))

    def pending_units(self, move_id, step: str) -> list[MoveUnit]:
        return [u for u in self.units(move_id, step) if u.state != "done"]

    def count_pending(self, move_id, step: str) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(MoveUnit).where(
                MoveUnit.move_id == _uuid(move_id), MoveUnit.step == step, MoveUnit.state != "done")))

    def _unit_update(self, move_id, step: str, unit: str, token: str, values: dict, *extra) -> MoveUnit | None:
        fence = select(Move.id).where(Move.id == _uuid(move_id), Move.token == token,
                                      Move.state.in_([wf.RUNNING])).scalar_subquery()
        conds = [MoveUnit.move_id == fence, MoveUnit.step == step, MoveUnit.unit == unit, *extra]
        with self.Session() as s:
            row = s.scalars(update(MoveUnit).where(and_(*conds))
                            .values(**values, updated_at=func.now()).returning(MoveUnit)).first()
            if row is not None:
                s.execute(update(Move).where(Move.id == _uuid(move_id)).values(heartbeat_at=func.now()))
            s.commit()
            return row

    def claim_unit(self, move_id, step: str, unit: str, token: str, owner: str, ttl_s: float) -> MoveUnit | None:
        now = func.now()
        return self._unit_update(
            move_id, step, unit, token,
            {"lease_owner": owner, "lease_until": now + dt.timedelta(seconds=ttl_s),
             "attempts": MoveUnit.attempts + 1},
            MoveUnit.state != "done",
            or_(MoveUnit.lease_owner.is_(None), MoveUnit.lease_owner == owner, MoveUnit.lease_until < now),
        )

    def checkpoint_unit(self, move_id, step: str, unit: str, token: str, owner: str, *, position: list | None,
                        done_delta: int = 0, bytes_delta: int = 0, ttl_s: float = 60.0) -> MoveUnit:
        row = self._unit_update(
            move_id, step, unit, token,
            {"position": position, "done": MoveUnit.done + done_delta,
             "bytes_done": MoveUnit.bytes_done + bytes_delta,
             "lease_until": func.now() + dt.timedelta(seconds=ttl_s)},
            MoveUnit.lease_owner == owner,
        )
        if row is None:
            raise LeaseLost(f"move {move_id}: lost the lease of unit {step}/{unit}",
                             "another worker or a newer attempt owns it; this worker stops")
        return row

    def finish_unit(self, move_id, step: str, unit: str, token: str, owner: str, result: dict | None = None) -> bool:
        row = self._unit_update(
            move_id, step, unit, token,
            {"state": "done", "lease_owner": None, "lease_until": None, "result": result or {}},
            MoveUnit.lease_owner == owner,
        )
        return row is not None

    def renew_step_lease(self, move_id, token: str, owner: str, ttl_s: float) -> bool:
        """Renew ``owner``'s lease of the move's current step (and its heartbeat); False if the lease is
        not its own any more (another execution took the step over) or the move stopped."""
        row = self._update(move_id, token, {"lease_until": func.now() + dt.timedelta(seconds=ttl_s),
                                            "heartbeat_at": func.now()},
                           Move.lease_owner == owner, Move.state.in_([wf.RUNNING, wf.ABORTING]))
        return row is not None

    def extend_unit_lease(self, move_id, step: str, unit: str, token: str, owner: str, ttl_s: float) -> bool:
        """Renew ``owner``'s lease of a unit (and the move's heartbeat); False if the lease is not its own."""
        row = self._unit_update(move_id, step, unit, token, {"lease_until": func.now() + dt.timedelta(seconds=ttl_s)},
                                MoveUnit.lease_owner == owner, MoveUnit.state != "done")
        return row is not None

    def release_unit(self, move_id, step: str, unit: str, owner: str) -> None:
        """Give a unit's lease back (a failing execution lets its retry in at once)."""
        with self.Session() as s:
            s.execute(update(MoveUnit).where(MoveUnit.move_id == _uuid(move_id), MoveUnit.step == step,
                                             MoveUnit.unit == unit, MoveUnit.lease_owner == owner)
                      .values(lease_owner=None, lease_until=None))
            s.commit()

    def release_step_lease(self, move_id, owner: str) -> None:
        with self.Session() as s:
            s.execute(update(Move).where(Move.id == _uuid(move_id), Move.lease_owner == owner)
                      .values(lease_owner=None, lease_until=None))
            s.commit()

    def set_unit_result(self, move_id, step: str, unit: str, token: str, owner: str, result: dict) -> None:
        self._unit_update(move_id, step, unit, token, {"result": result}, MoveUnit.lease_owner == owner)

    def reset_units(self, move_id, steps: Iterable[str]) -> None:
        """Forget the progress of these steps (a resumed move whose freeze was lifted copies again)."""
        with self.Session() as s:
            s.execute(delete(MoveUnit).where(MoveUnit.move_id == _uuid(move_id), MoveUnit.step.in_(list(steps))))
            s.commit()

    def live_unit_leases(self, move_id) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(MoveUnit).where(
                MoveUnit.move_id == _uuid(move_id), MoveUnit.lease_until > func.now())) or 0)

    def now(self) -> dt.datetime:
        with self.Session() as s:
            return s.scalar(text("SELECT now()"))


def _jsonb(data: dict):

    return literal(data, JSONB)
