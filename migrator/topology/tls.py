"""Transport security of the Topology Service: gRPC credentials from ``topology.tls``, and the rule
that a server without TLS listens on loopback only (docs/adr/0013-topology-mtls.md).

- The server requires a client certificate signed by the configured CA; it re-reads its certificate,
  key and CA when their files change, so certificates rotate without a restart.
- A client presents its own certificate (its role is the certificate's OU) and trusts only the CA.
- Without ``topology.tls``, ``migrator topology serve`` refuses an address other than loopback or a
  unix socket unless ``topology.insecure: true``, and a client refuses to send route changes in clear
  to such an address on the same terms.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from migrator.errors import ConfigError
from migrator.net import is_loopback_host

log = logging.getLogger(__name__)


def host_of(address: str) -> str | None:
    """The host of a gRPC address (HOST:PORT, [V6]:PORT, dns:HOST:PORT, ipv4:...), None for unix:."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme):]
            break
    if address.startswith("["):
        return address[1:address.find("]")] if "]" in address else address
    return address.rsplit(":", 1)[0] if ":" in address else address


def is_local(address: str) -> bool:
    """A unix socket, or a loopback host (127.0.0.0/8, ::1, localhost)."""
    host = host_of(address)
    return host is None or is_loopback_host(host)


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}",
                          "make the fleet's certificates with `migrator topology certs init DIR` and point "
                          "topology.tls at them") from None


def _path(settings, value: str | None, key: str) -> Path:
    if not value:
        raise ConfigError(f"topology.tls.{key} is not set",
                          f"set topology.tls.{key} (migrator topology certs init DIR makes the files)")
    return settings.resolve_path(value)


# ------------------------------------------------------------------------------------------ server


@dataclass
class _ServerFiles:
    ca: Path
    cert: Path
    key: Path

    def stamp(self) -> tuple:
        return tuple(os.stat(p).st_mtime_ns for p in (self.ca, self.cert, self.key))

    def configuration(self):
        return grpc.ssl_server_certificate_configuration(
            [(read_file(self.key, "the server key"), read_file(self.cert, "the server certificate"))],
            root_certificates=read_file(self.ca, "the CA certificate"))


def server_credentials(settings) -> grpc.ServerCredentials:
    """mTLS credentials of ``migrator topology serve``; new files are picked up at the next handshake."""
    tls = settings.topology.tls
    files = _ServerFiles(_path(settings, tls.ca, "ca"), _path(settings, tls.server_cert, "server_cert"),
                         _path(settings, tls.server_key, "server_key"))
    initial = files.configuration()
    seen = {"stamp": files.stamp()}

    def fetch():
        try:
            stamp = files.stamp()
            if stamp == seen["stamp"]:
                return None
            config = files.configuration()
        except (OSError, ConfigError) as exc:  # a half-written rotation: keep serving the old files
            log.warning("topology TLS files changed but cannot be read yet (%s); keeping the current ones", exc)
            return None
        seen["stamp"] = stamp
        log.info("topology TLS: certificate files changed, new handshakes use them (%s)", files.cert)
        return config

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)


def check_listen(settings, listen: str) -> None:
    """Refuse a non-local listen address without TLS unless topology.insecure; say loudly what it costs."""
    topo = settings.topology
    if topo.tls is not None:
        return
    if not is_local(listen):
        if not topo.insecure:
            raise ConfigError(
                f"the Topology Service refuses to listen on {listen} without TLS: anyone who reaches the port "
                "could freeze and flip any organization's route",
                "configure topology.tls (make the certificates with `migrator topology certs init DIR`), or "
                "listen on 127.0.0.1; topology.insecure: true overrides this on a network you fully trust")
        for line in (
            "*" * 78,
            f"INSECURE: the Topology Service listens on {listen} WITHOUT TLS (topology.insecure: true).",
            "Anyone who reaches this port can freeze, flip and unfreeze any route and register cells.",
            "Configure topology.tls: `migrator topology certs init DIR`, docs/security.md.",
            "*" * 78,
        ):
            log.warning(line)
        return
    log.warning("the Topology Service runs WITHOUT TLS on %s: every local process that reaches it may change "
                "routes (configure topology.tls; docs/security.md)", listen)


# ------------------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for mTLS, read from the files once."""

    ca: bytes
    cert: bytes
    key: bytes
    server_name: str | None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def options(self, address: str) -> list[tuple[str, str]]:
        name = self.server_name or ("localhost" if host_of(address) is None else None)
        return [("grpc.ssl_target_name_override", name)] if name else []


def client_tls(settings) -> ClientTls | None:
    """The client's TLS material, or None without ``topology.tls`` (then only a local address is allowed)."""
    topo = settings.topology
    if topo.tls is None:
        if topo.address and not is_local(topo.address) and not topo.insecure:
            raise ConfigError(
                f"topology.address {topo.address} is not local and topology.tls is not set: route changes "
                "would travel in clear to a server that cannot tell who calls",
                "configure topology.tls with this process's client certificate, or set topology.insecure: true")
        return None
    tls = topo.tls
    return ClientTls(
        ca=read_file(_path(settings, tls.ca, "ca"), "the CA certificate"),
        cert=read_file(_path(settings, tls.client_cert, "client_cert"), "the client certificate"),
        key=read_file(_path(settings, tls.client_key, "client_key"), "the client key"),
        server_name=tls.server_name,
    )
