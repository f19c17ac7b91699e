"""Addresses: which hosts are loopback (every listener binds to one unless told otherwise)."""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"


def is_loopback_host(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed). Empty (every interface) is not."""
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
