"""Certificates of the Topology Service's mutual TLS (docs/adr/0013-topology-mtls.md).

One private CA signs a server certificate (SANs for loopback, this host and any name given) and one
client certificate per caller. A client certificate says who calls (subject CN) and in which role
(subject OU): ``reader`` (classify, list), ``mover`` (freeze, refence, flip, unfreeze; reads too) or
``admin`` (register cells and routes, set cell state, repair; everything else too).

``migrator topology certs init DIR`` writes, into DIR::

    ca.pem ca-key.pem                 the CA (keep ca-key.pem offline once the fleet is issued)
    server.pem server-key.pem         for `migrator topology serve`
    reader.pem reader-key.pem         routers, applications, the rebalancer's readers
    mover.pem mover-key.pem           Celery workers, operators' CLI and API (they re-fence on abort)
    admin.pem admin-key.pem           `migrator cells init`, `seed`, `topology repair`

Keys are EC P-256 (fast to make: a test session issues a whole fleet in a few milliseconds) and
written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from migrator.errors import MigratorError

ROLES = ("reader", "mover", "admin")
# A role may do what every lower role may.
ROLE_RANK = {"reader": 1, "mover": 2, "admin": 3}
SERVER_UNIT = "topology-server"
CA_NAME = "cells-migrator topology CA"
DEFAULT_DAYS = 397  # the longest validity browsers accept for a leaf; a yearly rotation
DEFAULT_CA_DAYS = 3650
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


class CertificateError(MigratorError):
    code = "certificate_error"


@dataclass(frozen=True)
class Identity:
    """Who a client certificate names: the caller (CN) and its role (OU; None: no known role)."""

    name: str
    role: str | None

    def may(self, role: str) -> bool:
        return self.role is not None and ROLE_RANK[self.role] >= ROLE_RANK[role]


# ----------------------------------------------------------------------------------------- making


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, unit: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cells-migrator")]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_ca(days: int = DEFAULT_CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    name = _name(CA_NAME, None)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key, ca_cert: x509.Certificate, *, common_name: str, role: str | None = None, server: bool = False,
          sans: list[str] | None = None, days: int = DEFAULT_DAYS) -> tuple[ec.EllipticCurvePrivateKey,
                                                                            x509.Certificate]:
    """A leaf certificate signed by the CA: a server's (``server``, with ``sans``) or a client's in ``role``."""
    if not server and role not in ROLES:
        raise CertificateError(f"role {role!r} is not one of {', '.join(ROLES)}")
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(common_name, SERVER_UNIT if server else role))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - _BACKDATE)
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(_san(sans or ["localhost"]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def default_server_names(extra: list[str] | None = None) -> list[str]:
    """Loopback, this host's name and ``extra`` (a DNS name or an IP address each)."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname()
    if host:
        names.append(host)
    return list(dict.fromkeys(names + list(extra or [])))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_pair(out: Path, stem: str, key, cert: x509.Certificate) -> dict[str, Path]:
    key_path, cert_path = out / f"{stem}-key.pem", out / f"{stem}.pem"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _pem(cert), 0o644)
    return {"cert": cert_path, "key": key_path}


def _load_ca(out: Path):
    try:
        cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertificateError(f"no CA in {out} ({exc.filename} is missing)",
                               f"make one with `migrator topology certs init {out}`") from None
    except ValueError as exc:
        raise CertificateError(f"the CA in {out} cannot be read: {exc}",
                               "ca.pem and ca-key.pem must be the PEM files `migrator topology certs init` wrote") \
            from None
    return key, cert


def init_fleet(out: str | os.PathLike, *, sans: list[str] | None = None, days: int = DEFAULT_DAYS,
               ca_days: int = DEFAULT_CA_DAYS, server_name: str = "topology", renew: bool = False) -> dict:
    """Make (or, with an existing CA in ``out``, reuse) the CA, then the server and one client per role.

    Existing leaf certificates are kept unless ``renew``; the CA is never replaced (delete ca.pem and
    ca-key.pem to start a new trust root, then every process needs its new certificates at once).
    Returns ``{"ca": path, "server": {...}, "clients": {role: {...}}, "created": [...]}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    if (out / "ca.pem").exists():
        ca_key, ca_cert = _load_ca(out)
    else:
        ca_key, ca_cert = make_ca(ca_days)
        _write(out / "ca-key.pem", _key_pem(ca_key), 0o600)
        _write(out / "ca.pem", _pem(ca_cert), 0o644)
        created.append("ca")
    result: dict = {"ca": out / "ca.pem", "ca_key": out / "ca-key.pem", "clients": {}, "created": created}
    if renew or not (out / "server.pem").exists():
        key, cert = issue(ca_key, ca_cert, common_name=server_name, server=True, sans=default_server_names(sans),
                          days=days)
        result["server"] = _write_pair(out, "server", key, cert)
        created.append("server")
    else:
        result["server"] = {"cert": out / "server.pem", "key": out / "server-key.pem"}
    for role in ROLES:
        if renew or not (out / f"{role}.pem").exists():
            key, cert = issue(ca_key, ca_cert, common_name=role, role=role, days=days)
            result["clients"][role] = _write_pair(out, role, key, cert)
            created.append(role)
        else:
            result["clients"][role] = {"cert": out / f"{role}.pem", "key": out / f"{role}-key.pem"}
    return result


def issue_client(out: str | os.PathLike, name: str, role: str, *, days: int = DEFAULT_DAYS) -> dict[str, Path]:
    """One more client certificate from the CA in ``out``: ``<name>.pem`` and ``<name>-key.pem``."""
    out = Path(out)
    if not name or "/" in name or name.startswith(".") or name in ("ca", "server"):
        raise CertificateError(f"{name!r} cannot name a client certificate",
                               "use letters, digits, '-' or '_' (ca and server are taken)")
    ca_key, ca_cert = _load_ca(out)
    key, cert = issue(ca_key, ca_cert, common_name=name, role=role, days=days)
    return _write_pair(out, name, key, cert)


# ----------------------------------------------------------------------------------------- reading


def identity_of(cert: x509.Certificate) -> Identity:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(ou[0].value) if ou else None
    return Identity(str(cn[0].value) if cn else "?", role if role in ROLE_RANK else None)


@lru_cache(maxsize=256)
def identity_of_pem(pem: bytes) -> Identity:
    """The caller a peer certificate (PEM, as gRPC's auth context gives it) names."""
    return identity_of(x509.load_pem_x509_certificate(pem))


def describe(path: str | os.PathLike) -> dict:
    """What a certificate file holds: subject, role, issuer, validity, days left, SANs."""
    path = Path(path)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"certificate file {path} does not exist") from None
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from None
    ident = identity_of(cert)
    now = dt.datetime.now(dt.UTC)
    try:
        sans = [str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.DNSName)]
        sans += [str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                 .get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    unit = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return {
        "path": str(path), "subject": cert.subject.rfc4514_string(), "name": ident.name,
        "role": ident.role or (str(unit[0].value) if unit else None), "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
        "expires_at": cert.not_valid_after_utc.timestamp(),
        "days_left": round((cert.not_valid_after_utc - now).total_seconds() / 86400, 1), "sans": sans,
    }
