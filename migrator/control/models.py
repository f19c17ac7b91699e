"""SQLAlchemy 2 models of the control database.

Two domains share it: the Topology Service (``cells``, ``routes``, ``route_history``) and the move
workflow (``moves``, ``move_events``, ``move_units``). The control database is the source of truth
for both; the Celery broker only carries wake-up calls (docs/adr/0001-architecture.md).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Move states in which a move holds its organization (at most one per organization).
ACTIVE_MOVE_STATES = ("queued", "running", "paused", "failed", "aborting")


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
