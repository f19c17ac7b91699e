"""SQLAlchemy 2 models of the control database.

Two domains share it: the Topology Service (``cells``, ``routes``, ``route_history``) and the move
workflow (``moves``, ``move_events``, ``move_units``, ``move_throughput``). The control database is the source of truth
for both; the Celery broker only carries wake-up calls (docs/adr/0001-architecture.md).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Move states in which a move holds its organization (at most one per organization: the partial unique
# index below), and the ones it ends in. ``migrator/moves/workflow.py`` names them for the workflow.
ACTIVE_MOVE_STATES = ("queued", "running", "paused", "failed", "aborting")
TERMINAL_MOVE_STATES = ("completed", "aborted", "rejected", "cleaned")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now_default():
    return func.now()


class Cell(Base):
    __tablename__ = "cells"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    address: Mapped[str] = mapped_column(Text, default="")  # masked DSN or service address
    state: Mapped[str] = mapped_column(String(16), default="active")
    seq_min: Mapped[int] = mapped_column(BigInteger, unique=True)
    seq_max: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now_default(), onupdate=func.now()
    )


class Route(Base):
    __tablename__ = "routes"

    organization_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    cell: Mapped[str] = mapped_column(ForeignKey("cells.name"), index=True)
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | frozen
    move_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now_default(), onupdate=func.now()
    )


class RouteHistory(Base):
    """Append-only: every change to a route, who made it and why."""

    __tablename__ = "route_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[int] = mapped_column(BigInteger, index=True)
    action: Mapped[str] = mapped_column(String(16))  # register | freeze | refence | flip | unfreeze
    from_cell: Mapped[str | None] = mapped_column(String(63), nullable=True)
    to_cell: Mapped[str | None] = mapped_column(String(63), nullable=True)
    version: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class Move(Base):
    __tablename__ = "moves"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    organization_id: Mapped[int] = mapped_column(BigInteger, index=True)
    source_cell: Mapped[str] = mapped_column(String(63))
    target_cell: Mapped[str] = mapped_column(String(63))
    strategy: Mapped[str] = mapped_column(String(16), default="frozen")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[str] = mapped_column(String(32), default="preflight")
    token: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    requested_by: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    plan: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    report: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    route_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    step_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    frozen_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    flipped_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    unfrozen_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cleaned_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Control state (``report`` is for humans): the source's clock at the freeze (drain waits out
    # transactions begun before it); whether a failure lifted the freeze (resume freezes again);
    # the tokens of earlier attempts (the fencing set); the change-log position applied to the target (a
    # source snapshot: every entry whose transaction it sees is applied) and the rate the catch-up
    # measured (online strategy).
    source_frozen_clock: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    freeze_lifted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    previous_tokens: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list,
                                                       server_default=text("'{}'::varchar[]"))
    capture_snapshot: Mapped[str | None] = mapped_column(Text, nullable=True)
    catch_up_keys_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The source snapshot the verification before the freeze left keys in flux out against (online: the
    # window re-verifies every key changed since), and the verdict of the verification after the flip
    # (None: not run; cleanup refuses after False). docs/adr/0012-the-write-window.md.
    verified_snapshot: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_after_flip: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # The health reading that pauses or slows the move's units while it lasts (None: running freely).
    throttle: Mapped[dict | None] = mapped_column(JSONB, nullable=True)

    __table_args__ = (
        # At most one active move per organization, enforced by the database itself.
        Index(
            "uq_moves_active_organization",
            "organization_id",
            unique=True,
            postgresql_where=text("state IN ('queued', 'running', 'paused', 'failed', 'aborting')"),
        ),
        Index("ix_moves_state", "state"),
    )


class MoveEvent(Base):
    """A move's history: every step start, finish and failure, and every operator action."""

    __tablename__ = "move_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    move_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("moves.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    step: Mapped[str | None] = mapped_column(String(32), nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))


class MoveUnit(Base):
    """One unit of fan-out work of a step (a key range of a table to copy or verify, a blob range).

    Fan-in is counted here, in PostgreSQL: a step is finished when none of its units is pending.
    ``position`` is the checkpoint (the last key done); ``lease_*`` stop two workers doing one unit.
    """

    __tablename__ = "move_units"

    move_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("moves.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    unit: Mapped[str] = mapped_column(String(200), primary_key=True)
    table_name: Mapped[str] = mapped_column(Text)
    ordinal: Mapped[int] = mapped_column(Integer, default=0)
    lo: Mapped[list | None] = mapped_column(JSONB, nullable=True)  # exclusive lower key bound
    hi: Mapped[list | None] = mapped_column(JSONB, nullable=True)  # inclusive upper key bound
    position: Mapped[list | None] = mapped_column(JSONB, nullable=True)  # last key done
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class MoveThroughput(Base):
    """What one move measured, per table (``kind`` rows) and per blob column's table (``kind`` blobs):
    rows (or blobs) and bytes, and the seconds of ``copy_rows`` (``copy_blobs``) and ``verify`` that were
    this table's share of the step's wall time (each step's time shared out by its units' busy seconds).

    Written when ``verify`` finishes; read by the estimate's calibration (migrator/moves/calibration.py).
    The move's other times (its whole duration, the write window) are on ``moves`` and not repeated.
    """

    __tablename__ = "move_throughput"

    move_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("moves.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # rows | blobs
    table_name: Mapped[str] = mapped_column(Text, primary_key=True)
    strategy: Mapped[str] = mapped_column(String(16))
    source_cell: Mapped[str] = mapped_column(String(63))
    target_cell: Mapped[str] = mapped_column(String(63))
    rows: Mapped[int] = mapped_column(BigInteger, default=0)  # blobs, for kind blobs
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    copy_s: Mapped[float] = mapped_column(Float, default=0.0)
    verify_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())

    __table_args__ = (Index("ix_move_throughput_finished_at", "finished_at"),)


# ---------------------------------------------------------------------------------------------------
# The rebalancer (docs/adr/0006-rebalancing-policy.md): capacity readings (a cache refreshed by
# celery beat), alerts received, plans and their items, the decisions log, pins, the global pause.


class CellReading(Base):
    """The latest capacity reading of a cell (one row per cell, replaced at each refresh).

    ``bytes`` is the load the thresholds apply to: the bytes of the organizations routed to the cell
    (their share of each table's size, plus their blobs). ``reclaimable_bytes``: copies of
    organizations routed elsewhere (sources awaiting cleanup).
    """

    __tablename__ = "cell_readings"

    cell: Mapped[str] = mapped_column(String(63), primary_key=True)
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    state: Mapped[str] = mapped_column(String(16), default="active")
    organizations: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    row_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    blob_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    database_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    reclaimable_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    moves_in: Mapped[int] = mapped_column(Integer, default=0)
    moves_out: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    tables: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))


class OrgReading(Base):
    """Rows and bytes of one organization's copy in one cell, from the latest reading of that cell."""

    __tablename__ = "org_readings"

    cell: Mapped[str] = mapped_column(String(63), primary_key=True)
    organization_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    routed: Mapped[bool] = mapped_column(Boolean, default=True)  # False: a copy awaiting cleanup
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    row_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    blob_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    blobs: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class RebalanceAlert(Base):
    """An Alertmanager alert as delivered (at least once: fingerprint + startsAt is its identity)."""

    __tablename__ = "rebalance_alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    starts_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # firing | resolved (as Alertmanager says)
    alertname: Mapped[str] = mapped_column(Text, default="")
    cell: Mapped[str | None] = mapped_column(Text, nullable=True)
    group_key: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    annotations: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    # What the rebalancer did: received | handling | handled | ignored
    state: Mapped[str] = mapped_column(String(16), default="received")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())

    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at", name="uq_rebalance_alerts_fingerprint_starts_at"),
    )


class RebalancePlan(Base):
    """Which organizations leave a hot cell for which targets, and why."""

    __tablename__ = "rebalance_plans"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    cell: Mapped[str] = mapped_column(String(63), index=True)
    # awaiting_approval | applying | done | superseded | empty
    status: Mapped[str] = mapped_column(String(24))
    trigger: Mapped[str] = mapped_column(String(16), default="operator")  # alert | operator
    alert_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[str] = mapped_column(Text, default="")
    approved_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    reaches_low_water: Mapped[bool] = mapped_column(Boolean, default=False)
    summary: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    approved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class RebalancePlanItem(Base):
    """One organization of a plan: pending until a move is started for it (or it is skipped)."""

    __tablename__ = "rebalance_plan_items"

    plan_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rebalance_plans.id", ondelete="CASCADE"), primary_key=True
    )
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    organization_id: Mapped[int] = mapped_column(BigInteger, index=True)
    source_cell: Mapped[str] = mapped_column(String(63))
    target_cell: Mapped[str] = mapped_column(String(63))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    window_s: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | started | skipped | superseded
    move_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class RebalanceDecision(Base):
    """Append-only: every decision of the rebalancer (alert received, plan made, move started or
    skipped and why), and every operator action on it."""

    __tablename__ = "rebalance_decisions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    kind: Mapped[str] = mapped_column(String(32))
    cell: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    organization_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    plan_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    alert_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    move_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    actor: Mapped[str] = mapped_column(Text, default="rebalancer")
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))


class OrganizationPin(Base):
    """An organization the rebalancer must never move (``migrator orgs pin ID``)."""

    __tablename__ = "organization_pins"

    organization_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    pinned_by: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    pinned_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class RebalancerState(Base):
    """The rebalancer's global switch (one row): paused by an operator or not."""

    __tablename__ = "rebalancer_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, default=1)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_by: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)
