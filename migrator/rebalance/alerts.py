"""Alertmanager webhooks (payload version 4): validation, deduplication, what each alert triggers.

Alertmanager delivers at least once and repeats firing alerts: an alert's identity is its
``fingerprint`` plus ``startsAt`` (a new firing of the same series has a new ``startsAt``). The
first delivery of a firing capacity alert is recorded and handed to a Celery task; any later
delivery does nothing. Resolved alerts are recorded. Alerts the rebalancer does not know are
accepted, recorded as ignored, and logged.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from migrator.config import Settings
from migrator.errors import BrokerUnavailable
from migrator.rebalance.store import RebalanceStore

log = logging.getLogger(__name__)


def clean_text(value: str) -> str:
    """Text PostgreSQL can store: no NUL character, valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


SafeStr = Annotated[str, AfterValidator(clean_text)]
LabelMap = dict[Annotated[str, AfterValidator(clean_text), Field(max_length=1024)],
                Annotated[str, AfterValidator(clean_text), Field(max_length=65536)]]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: LabelMap = Field(default_factory=dict)
    annotations: LabelMap = Field(default_factory=dict)
    startsAt: dt.datetime
    endsAt: dt.datetime | None = None
    generatorURL: SafeStr = ""
    fingerprint: Annotated[SafeStr, Field(min_length=1, max_length=128)]

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _tz(cls, value: dt.datetime | None) -> dt.datetime | None:
        value = _utc(value)
        # Alertmanager sends 0001-01-01T00:00:00Z for "no end yet".
        if value is not None and value.year <= 1:
            return None
        return value

    @field_validator("startsAt")
    @classmethod
    def _starts(cls, value: dt.datetime | None) -> dt.datetime:
        if value is None:
            raise ValueError("startsAt must be a real time")
        return value


class WebhookPayload(BaseModel):
    """The body Alertmanager POSTs to a webhook receiver (version 4)."""

    model_config = ConfigDict(extra="allow")

    version: SafeStr = "4"
    groupKey: Annotated[SafeStr, Field(max_length=65536)] = ""
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: SafeStr = ""
    groupLabels: LabelMap = Field(default_factory=dict)
    commonLabels: LabelMap = Field(default_factory=dict)
    commonAnnotations: LabelMap = Field(default_factory=dict)
    externalURL: SafeStr = ""
    alerts: list[WebhookAlert] = Field(max_length=10_000)


def receive(settings: Settings, store: RebalanceStore, payload: WebhookPayload,
            enqueue: Callable[[int, str], object]) -> list[dict]:
    """Record each alert of a delivery; enqueue the rebalancer for new firing capacity alerts.

    ``enqueue(alert_id, cell)`` sends the Celery task. If it fails the alert is forgotten again and
    :class:`BrokerUnavailable` raised, so the API answers 503 and Alertmanager retries.
    """
    results = []
    known = set(settings.rebalance.alertnames)
    for a in payload.alerts:
        name = a.labels.get("alertname", "")
        cell = a.labels.get("cell")
        ours = name in known
        common = {"fingerprint": a.fingerprint, "starts_at": a.startsAt, "ends_at": a.endsAt,
                  "alertname": name, "cell": cell, "group_key": payload.groupKey, "labels": a.labels,
                  "annotations": a.annotations}
        out = {"fingerprint": a.fingerprint, "alertname": name, "status": a.status, "cell": cell}
        if not ours:
            new_id, _ = store.record_alert(status=a.status, state="ignored", **common)
            log.info("alert %s (%s, fingerprint %s, cell %s) is not one the rebalancer acts on: ignored",
                     name or "(no alertname)", a.status, a.fingerprint, cell)
            results.append({**out, "result": "ignored" if new_id else "duplicate"})
            continue
        if a.status == "resolved":
            new_id, existing = store.record_alert(status="resolved", state="handled", **common)
            if new_id is None and existing is not None and existing.status == "firing":
                store.resolve_alert(existing.id, a.endsAt)
                new_id = existing.id
            elif new_id is None:
                log.info("alert %s for %s (fingerprint %s): resolved again, already recorded", name, cell,
                         a.fingerprint)
                results.append({**out, "result": "duplicate"})
                continue
            store.decide("alert_resolved", f"{name} for cell {cell} resolved"
                         + (f" at {a.endsAt:%Y-%m-%d %H:%M:%S} UTC" if a.endsAt else ""),
                         cell=cell, alert_id=new_id, actor="alertmanager")
            results.append({**out, "result": "resolved", "alert_id": new_id})
            continue
        if not cell or cell not in settings.cells:
            new_id, _ = store.record_alert(status="firing", state="ignored", **common)
            if new_id is not None:
                why = "has no `cell` label" if not cell else f"names cell {cell!r}, which is not configured"
                store.decide("alert_ignored", f"{name} firing {why}: nothing to rebalance", cell=cell,
                             alert_id=new_id, actor="alertmanager", detail={"labels": a.labels})
                log.warning("alert %s (fingerprint %s) %s: ignored", name, a.fingerprint, why)
            results.append({**out, "result": "ignored" if new_id else "duplicate"})
            continue
        new_id, existing = store.record_alert(status="firing", state="received", **common)
        if new_id is None:
            log.info("alert %s for %s (fingerprint %s, startsAt %s): duplicate delivery, nothing to do", name, cell,
                     a.fingerprint, a.startsAt.isoformat())
            results.append({**out, "result": "duplicate", "alert_id": existing.id if existing else None})
            continue
        summary = a.annotations.get("summary") or a.annotations.get("description") or ""
        store.decide("alert_received", f"{name} firing for cell {cell}" + (f": {summary}" if summary else "")
                     + "; rebalancer enqueued", cell=cell, alert_id=new_id, actor="alertmanager",
                     detail={"labels": a.labels, "starts_at": a.startsAt.isoformat(), "group_key": payload.groupKey})
        try:
            enqueue(new_id, cell)
        except Exception as exc:  # noqa: BLE001 - any broker failure: let Alertmanager retry
            store.forget_alert(new_id)
            raise BrokerUnavailable(f"could not enqueue the rebalancer for alert {a.fingerprint}: {exc}",
                                    "check the broker (Redis); Alertmanager retries the delivery") from None
        results.append({**out, "result": "enqueued", "alert_id": new_id})
    return results


def alert_as_dict(a) -> dict:
    return {"id": a.id, "fingerprint": a.fingerprint, "alertname": a.alertname, "cell": a.cell, "status": a.status,
            "state": a.state, "starts_at": a.starts_at.isoformat() if a.starts_at else None,
            "ends_at": a.ends_at.isoformat() if a.ends_at else None,
            "received_at": a.received_at.isoformat() if a.received_at else None, "labels": a.labels,
            "annotations": a.annotations}
