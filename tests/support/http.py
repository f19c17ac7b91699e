"""Plain HTTP for tests of the listeners (metrics endpoints, Flower): a GET, and a sample from a
Prometheus text exposition."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request


def get(url: str, headers: dict | None = None, *, auth: tuple[str, str] | None = None,
        timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def sample(text: str, name: str, **labels) -> float:
    """The sum of the samples of metric ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if (head == name or head.startswith(name + "{")) and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
