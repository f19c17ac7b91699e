"""The broker as the workers see it: each queue the workers consume, and how many messages wait on it.

Read through kombu's own Redis transport with the configured ``broker_url`` and transport options, so
every URL kombu accepts works (``redis://``, ``rediss://``, ``redis+socket://``) and the keys are the
ones the workers use: ``celery.queue_prefix`` in the queue names, the workers' transport options
(``dispatch.broker_transport_options``: a ``global_keyprefix`` there would be applied here too), and
kombu's priority sub-queues (``<queue>\\x06\\x163`` …) summed into their queue.
``redis-cli -u $BROKER_URL LLEN control`` gets none of these right in every deployment.

``unacked`` is kombu's hash of the messages a worker has taken but not acknowledged yet (with late
acks: prefetched or running); when a worker dies they return to their queue after
``celery.visibility_timeout_s``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from migrator.config import Settings
from migrator.dsn import mask_dsn
from migrator.errors import BrokerUnavailable

# Seconds to wait for the broker before reporting it down (an operator is waiting).
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class QueueDepth:
    name: str       # the queue's name in the broker (prefix included)
    kind: str       # control, rows or blobs
    messages: int   # waiting to be taken by a worker
    unacked: int    # taken by a worker, not acknowledged yet (prefetched or running)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BrokerQueues:
    queues: list[QueueDepth]
    uptime_s: int | None   # the Redis server's uptime: a young Redis restarted (and may have lost queues)


def queue_depths(settings: Settings) -> BrokerQueues:
    """Every queue the workers consume, in routing order (control, rows, blobs), with its lengths.

    Raises :class:`BrokerUnavailable` (message and hint) when the broker does not answer."""
    from kombu import Connection

    from migrator.moves.dispatch import QUEUES, broker_transport_options, queue_name

    options = {**broker_transport_options(settings), "socket_connect_timeout": CONNECT_TIMEOUT_S,
               "socket_timeout": CONNECT_TIMEOUT_S}
    names = {queue_name(settings, kind): kind for kind in QUEUES}
    try:
        with Connection(settings.broker_url, connect_timeout=CONNECT_TIMEOUT_S, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_S)
            channel = conn.default_channel
            if not hasattr(channel, "_size"):
                raise BrokerUnavailable(
                    f"the broker {mask_dsn(settings.broker_url)} is not Redis ({conn.transport_cls})",
                    "`migrator broker queues` reads kombu's Redis transport; use the broker's own tools")
            waiting = {name: int(channel._size(name)) for name in names}
            unacked = _unacked_by_queue(channel)
            uptime = channel.client.info("server").get("uptime_in_seconds")
    except BrokerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - kombu/redis-py raise many kinds; all mean "no answer"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BrokerUnavailable(
            f"the broker {mask_dsn(settings.broker_url)} does not answer: {first}",
            "check that Redis runs and that broker_url in the config points at it "
            "(a worker's log says `Connected to …` with the URL it uses)") from None
    return BrokerQueues([QueueDepth(name=name, kind=kind, messages=waiting[name], unacked=unacked.get(name, 0))
                         for name, kind in names.items()], None if uptime is None else int(uptime))


def _unacked_by_queue(channel) -> dict[str, int]:
    """kombu keeps ``unacked`` as delivery tag -> ``[message, exchange, routing_key]``; the migrator's
    queues use the default exchange with the queue's name as routing key (dispatch.kombu_queues)."""
    counts: dict[str, int] = {}
    for raw in channel.client.hvals(channel.unacked_key):
        try:
            _message, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        queue = routing_key if not exchange else f"{exchange}/{routing_key}"
        counts[queue] = counts.get(queue, 0) + 1
    return counts
