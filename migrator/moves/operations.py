"""What operators do to moves: request, pause, resume, abort, clean up. Used by the CLI and the API."""

from __future__ import annotations

import datetime as dt
import getpass
import logging

from migrator.config import Settings
from migrator.db import connect, first_line
from migrator.dictionary import load_dictionary
from migrator.errors import BrokerUnavailable, CaptureIncomplete, InvalidMoveState, MigratorError
from migrator.moves import change_log, recovery
from migrator.moves import workflow as wf
from migrator.moves.admission import admit
from migrator.moves.dispatch import Dispatcher
from migrator.moves.steps.preflight import run_preflight, validate_request
from migrator.moves.store import MoveStore, new_token

log = logging.getLogger(__name__)


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


class Operations:
    def __init__(self, settings: Settings, dispatcher: Dispatcher | None = None, topology=None):
        self.settings = settings
        self.store = MoveStore(settings.control_dsn)
        self._dispatcher = dispatcher
        self._topology = topology

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.settings)
        return self._dispatcher

    @property
    def topology(self):
        if self._topology is None:
            # deferred: the gRPC client is slow to import and only this path needs it
            from migrator.topology.client import topology_client

            self._topology = topology_client(self.settings)
        return self._topology

    # ------------------------------------------------------------------ start
    def request_move(self, org: int, target: str, *, actor: str | None = None, reason: str = "",
                     strategy: str | None = None, force: bool = False):
        """Record a move within the concurrency guardrails (``force`` with a reason: past them, kept in
        its history) and send its first step. A broker that does not take the message leaves the move
        recorded: BrokerUnavailable names it, and the reconciler sends it when the broker is back."""
        if force and not reason.strip():
            raise MigratorError("a forced move needs a reason", "say why with --reason (API: \"reason\")")
        route = validate_request(self.settings, self.topology, org, target)

        def admission(session):
            return admit(session, self.settings, organization_id=org, source=route.cell, target=target, force=force)

        move = self.store.create(organization_id=org, source=route.cell, target=target,
                                 requested_by=actor or default_actor(), reason=reason or "operator request",
                                 strategy=strategy or self.settings.moves.default_strategy, admission=admission)
        try:
            self.dispatcher.step(move, wf.FIRST_STEP)
        except Exception as exc:  # noqa: BLE001 - any broker failure: the move is recorded, the reconciler sends it
            log.warning("move %s recorded but its first step was not sent: %s", move.id, exc)
            raise BrokerUnavailable(
                f"move {move.id} is recorded, but the broker did not take its first step ({first_line(exc)}); "
                f"the reconciler sends it within {self.settings.moves.stale_after_s:g} s of the broker's return",
                f"follow it with `migrator status {move.id}`; check the broker (Redis)", move_id=str(move.id)) \
                from None
        return move

    def dry_run(self, org: int, target: str, strategy: str | None = None) -> dict:
        """Preflight only, in this process: nothing is recorded or changed. The plan's estimates are for
        ``strategy`` (default ``moves.default_strategy``)."""

        route = validate_request(self.settings, self.topology, org, target)
        conns = []

        def connect_cell(cell):
            conn = connect(self.settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=True)
            conns.append(conn)
            return conn

        try:
            return run_preflight(self.settings, self.topology, load_dictionary(self.settings.dictionary_file()),
                                 org, route.cell, target, connect_cell=connect_cell, strategy=strategy)
        finally:
            for c in conns:
                c.close()

    # ------------------------------------------------------------------ control
    def _takeover(self, move, state: str, *, step: str | None = None):
        """Fence out every worker of the current attempt: the route's freeze first, then the move."""
        token = new_token()
        recovery.take_over_freeze(self.topology, move, token, actor="operator", reason=f"move {move.id} -> {state}")
        updated = self.store.rotate_token(move.id, move.token, token, state=state, step=step)
        if updated is None:
            raise InvalidMoveState(f"move {move.id} changed while you asked; try again", "see `migrator status`")
        return updated

    def pause(self, move_id, actor: str | None = None):
        move = self.store.get(move_id)
        if move.state not in (wf.RUNNING, wf.QUEUED):
            raise InvalidMoveState(f"move {move.id} is {move.state}; only a running move can be paused")
        updated = self.store.pause(move.id, move.token)
        if updated is None:
            raise InvalidMoveState(f"move {move.id} changed while you asked; try again", "see `migrator status`")
        self.store.event(move.id, move.step, "paused", "paused by operator", actor=actor or default_actor())
        return updated

    def resume(self, move_id, actor: str | None = None):
        move = self.store.get(move_id)
        if move.state not in (wf.FAILED, wf.PAUSED, wf.RUNNING, wf.QUEUED):
            raise InvalidMoveState(f"move {move.id} is {move.state}; nothing to resume",
                                   "start a new move with `migrator move`")
        step = move.step
        lifted = move.freeze_lifted and move.flipped_at is None
        steps = wf.steps_for(move.strategy)
        online = move.strategy == "online"
        # Where a move whose freeze was lifted (after a failure) starts again: the frozen strategy
        # freezes again and copies again (upsert); the online one's capture never stopped, so it
        # catches up from its log.
        restart = "catch_up" if online else "freeze"
        # A capture that may have missed changes cannot be caught up from: capture again and copy again.
        recapture = online and move.error_code == CaptureIncomplete.code and move.flipped_at is None
        if recapture:
            step = "capture"
        elif lifted and steps.index(step) > steps.index(restart):
            step = restart
        updated = self._takeover(move, wf.RUNNING, step=step)
        if recapture:
            change_log.stop(self.settings, move)  # its log goes with it; the new capture starts before the copy
            self.store.set_fields(move.id, updated.token, capture_snapshot=None, verified_snapshot=None)
        if lifted or recapture:
            # The freeze was lifted: the next freeze starts a new write window.
            self.store.set_fields(move.id, updated.token, frozen_at=None, unfrozen_at=None, freeze_lifted=False)
            self.store.reset_units(move.id, ["verify"] if online and not recapture
                                   else ["copy_rows", "copy_blobs", "verify"])
        self.store.event(move.id, step, "resumed", f"attempt {updated.attempt} from step {step}",
                         actor=actor or default_actor())
        self.dispatcher.step(updated, step)
        return updated

    def abort(self, move_id, actor: str | None = None, reason: str = ""):
        move = self.store.get(move_id)
        if move.state in wf.TERMINAL_STATES and move.flipped_at is None:
            raise InvalidMoveState(f"move {move.id} is already {move.state}; nothing to abort")
        route = self.topology.classify(move.organization_id)
        if move.flipped_at is not None or (route.cell == move.target_cell and move.state != wf.ABORTED):
            raise InvalidMoveState(
                f"move {move.id} has already flipped organization {move.organization_id} to {move.target_cell!r}",
                f"the way back is a move in the other direction: migrator move --org {move.organization_id} "
                f"--to {move.source_cell}",
            )
        updated = self._takeover(move, wf.ABORTING)
        self.store.event(move.id, move.step, "abort_requested", reason or "aborted by operator",
                         actor=actor or default_actor())
        self.dispatcher.abort(updated)
        return updated

    def cleanup(self, move_id, *, force: bool = False, accept_differences: str | None = None,
                actor: str | None = None):
        move = self.store.get(move_id)
        check_cleanup_allowed(self.settings, move, force=force, now=self.store.now(),
                              accept_differences=accept_differences)
        note = ", ".join(x for x in ("force" if force else "", f"differences accepted: {accept_differences}"
                                     if accept_differences and move.verified_after_flip is False else "") if x)
        self.store.event(move.id, None, "cleanup_requested", note, actor=actor or default_actor())
        self.dispatcher.cleanup(move, force=force, actor=actor or default_actor(),
                                accept_differences=accept_differences)
        return move


def check_cleanup_allowed(settings: Settings, move, *, force: bool, now: dt.datetime,
                          accept_differences: str | None = None) -> None:
    if move.state == wf.CLEANED:
        return
    if move.state != wf.COMPLETED:
        raise InvalidMoveState(f"move {move.id} is {move.state}; only a completed move's source copy can be deleted")
    if move.verified_after_flip is False and not accept_differences:
        raise MigratorError(
            f"move {move.id}: the verification after the flip found the source copy in {move.source_cell!r} "
            f"differing from {move.target_cell!r} (`migrator status {move.id}` lists the ranges); deleting it "
            "would delete the evidence",
            "compare and repair per docs/runbooks/verification-failed.md, then "
            f"`migrator cleanup {move.id} --accept-differences REASON`")
    retention = dt.timedelta(hours=settings.moves.retention_hours)
    if not force and move.completed_at and now < move.completed_at + retention:
        left = move.completed_at + retention - now
        raise MigratorError(
            f"move {move.id} completed {move.completed_at:%Y-%m-%d %H:%M} UTC; its source copy is kept for "
            f"{settings.moves.retention_hours:g} h (another {left.total_seconds() / 3600:.1f} h)",
            "wait for the retention period, or pass --force to delete it now",
        )
