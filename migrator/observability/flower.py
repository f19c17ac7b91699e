"""Flower (``celery -A tasks flower``) never serves its UI unauthenticated beyond loopback.

Flower takes its options from the command line, ``FLOWER_*`` environment variables and a
``flowerconfig.py``; the Celery app cannot veto them, so ``tasks/observability.py`` wraps Flower's
``start_http_server`` (it runs once every option is parsed) with :func:`check_flower`: without an
address Flower binds 127.0.0.1 (its own default is every interface), and it refuses to start without
authentication (``--basic-auth`` / ``FLOWER_BASIC_AUTH`` / ``observability.flower_basic_auth``, or
``--auth`` with OAuth) on any other address.
"""

from __future__ import annotations

from migrator.net import LOOPBACK, is_loopback_host


def check_flower(options) -> str | None:
    """Make Flower's options safe; a message when it must not start (None: it may)."""
    if not options.address and not options.unix_socket:
        options.address = LOOPBACK
    authenticated = bool(options.basic_auth or options.auth)
    if authenticated or options.unix_socket or is_loopback_host(options.address):
        return None
    return (f"Flower refuses to listen on {options.address}:{options.port} without authentication: its UI and API "
            "can revoke tasks and shut workers down. Give it --basic-auth=user:password (or FLOWER_BASIC_AUTH, "
            "observability.flower_basic_auth), or listen on 127.0.0.1 (--address=127.0.0.1).")
