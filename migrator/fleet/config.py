"""A fleet's ``migrator.yaml``: a control database, cells with their blob stores, the Topology Service
(mutual TLS with the fleet's certificates, ``migrator topology certs``), moves and queue settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from migrator.atomic_file import write_text


def tls_section(certs: dict, role: str = "admin") -> dict:
    """``topology.tls`` from ``migrator.topology.certs.init_fleet``'s result: the CA, the server's pair and the
    client pair of ``role`` (the config's own; processes get theirs with :func:`role_env`)."""
    client = certs["clients"][role]
    return {"ca": str(certs["ca"]), "server_cert": str(certs["server"]["cert"]),
            "server_key": str(certs["server"]["key"]), "client_cert": str(client["cert"]),
            "client_key": str(client["key"])}


def role_env(certs: dict, role: str) -> dict[str, str]:
    """Environment that makes a process of the fleet call the Topology Service as ``role``."""
    client = certs["clients"][role]
    return {"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(client["cert"]),
            "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(client["key"])}


def merge(config: dict, overrides: dict | None) -> dict:
    """``overrides`` on top of ``config``: a section (a dict) is updated key by key, anything else replaced."""
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def fleet_config(*, control_dsn: str, broker_url: str, cell_dsns: dict[str, str], blob_root: Path,
                 topology_address: str | None, topology_listen: str, tls: dict | None, queue_prefix: str,
                 blobs: dict[str, dict] | None = None, overrides: dict | None = None) -> dict:
    """The config of a fleet: cells ``cell_dsns`` with local blob stores under ``blob_root`` (or ``blobs[cell]``)."""
    config = {
        "control_dsn": control_dsn,
        "broker_url": broker_url,
        "cells": {name: {"dsn": dsn, "blobs": (blobs or {}).get(name)
                         or {"kind": "local", "path": str(Path(blob_root) / name)}}
                  for name, dsn in cell_dsns.items()},
        "topology": {"address": topology_address, "listen": topology_listen, **({"tls": tls} if tls else {})},
        "celery": {"queue_prefix": queue_prefix},
    }
    return merge(config, overrides)


def write_config(path: Path, config: dict, header: str = "") -> None:
    """Write ``config`` as YAML, readable by its owner only (it may hold a password), atomically."""
    write_text(Path(path), header + yaml.safe_dump(config, sort_keys=False), mode=0o600)
