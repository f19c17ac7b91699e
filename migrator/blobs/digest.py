"""Blob checksums as rows hold them: an algorithm (sha256, sha1, md5) and an encoding (hex, raw, base64).

A row's checksum column holds the digest of the object it references. Applications store it in
different ways: GitLab keeps sha256 digests as raw ``bytea`` (package files, job artifacts), others
as hex text, some as base64 (S3's ``Content-MD5`` habit), some with md5 or sha1. The dictionary
declares the algorithm (default sha256) and may declare the encoding; left out, the encoding follows
the column's type: ``bytea`` is raw, text types are hex.

Everything below compares :class:`Digest` values (algorithm + lower-case hex): a row's value is
decoded once (:func:`decode`), whatever its encoding, and an object's bytes are hashed with the
declared algorithm (:func:`new_hash`). Pure functions, no database, no store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

SHA256 = "sha256"
# Digest size in bytes of each algorithm the copier can compute.
ALGORITHMS: dict[str, int] = {"sha256": 32, "sha1": 20, "md5": 16}
HEX, RAW, BASE64 = "hex", "raw", "base64"
ENCODINGS = (HEX, RAW, BASE64)

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_TEXT_TYPE = re.compile(r"^(text|character varying|character|varchar|char|bpchar|citext)(\((\d+)\))?$")


@dataclass(frozen=True)
class Digest:
    """A digest: the algorithm and its value in lower-case hex."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm} {self.hex}"

    def short(self) -> str:
        return f"{self.algorithm} {self.hex[:12]}…"


class ChecksumFormatError(ValueError):
    """A row's checksum value cannot be a digest of the declared algorithm in the declared encoding."""


def new_hash(algorithm: str):
    """A hashlib object for ``algorithm`` (md5 and sha1 here are checksums, not security)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    return hashlib.new(algorithm, usedforsecurity=False)


def hash_bytes(data: bytes, algorithm: str = SHA256) -> Digest:
    h = new_hash(algorithm)
    h.update(data)
    return Digest(algorithm, h.hexdigest())


def hex_length(algorithm: str) -> int:
    return 2 * ALGORITHMS[algorithm]


def encoded_length(algorithm: str, encoding: str) -> int:
    """Characters (bytes for raw) a digest takes in ``encoding``."""
    size = ALGORITHMS[algorithm]
    return {HEX: 2 * size, RAW: size, BASE64: 4 * ((size + 2) // 3)}[encoding]


def _text_type(column_type: str) -> re.Match | None:
    return _TEXT_TYPE.match(column_type.strip().lower())


def encodings_for_type(column_type: str) -> tuple[str, ...]:
    """The encodings a column of ``column_type`` (``format_type`` text) can hold: ``bytea`` raw, text
    types hex or base64, anything else none (the copier could not compare it)."""
    if column_type.strip().lower() == "bytea":
        return (RAW,)
    if _text_type(column_type):
        return (HEX, BASE64)
    return ()


def inferred_encoding(column_type: str) -> str | None:
    """The encoding a checksum column of ``column_type`` has when the dictionary declares none."""
    allowed = encodings_for_type(column_type)
    return allowed[0] if allowed else None


def text_limit(column_type: str) -> int | None:
    """The length limit of a ``character varying(n)`` / ``character(n)`` column (None: unlimited or not text)."""
    m = _text_type(column_type)
    return int(m.group(3)) if m and m.group(3) else None


def _describe(value) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"\\x{data[:12].hex()}{'…' if len(data) > 12 else ''} ({len(data)} bytes)"
    text = str(value)
    return f"{text[:24]!r}{'…' if len(text) > 24 else ''} ({len(text)} characters)"


def decode(value, algorithm: str = SHA256, encoding: str | None = None) -> Digest:
    """The :class:`Digest` a row's checksum ``value`` holds.

    ``value`` is what psycopg returns: ``bytes`` for a ``bytea`` column, ``str`` for text. Without
    ``encoding``, bytes are raw and text is hex. Raises :class:`ChecksumFormatError` (saying what the
    value is and what was expected) when the value cannot be such a digest: a wrong length (a sha1 in a
    column declared sha256), characters that are not hex or base64, text where raw bytes were declared.
    """
    size = ALGORITHMS.get(algorithm)
    if size is None:
        raise ChecksumFormatError(f"unknown checksum algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    is_bytes = isinstance(value, bytes | bytearray | memoryview)
    if encoding is None:
        encoding = RAW if is_bytes else HEX
    if encoding not in ENCODINGS:
        raise ChecksumFormatError(f"unknown checksum encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if encoding == RAW:
        if not is_bytes:
            raise ChecksumFormatError(f"holds text {_describe(value)}, not raw bytes (bytea)")
        data = bytes(value)
        if len(data) != size:
            raise ChecksumFormatError(f"holds {_describe(value)}; a raw {algorithm} digest is {size} bytes")
        return Digest(algorithm, data.hex())
    if is_bytes:
        raise ChecksumFormatError(f"holds raw bytes {_describe(value)}, not {encoding} text")
    text = str(value).strip()  # character(n) pads with spaces
    if encoding == HEX:
        if not _HEX.match(text):
            raise ChecksumFormatError(f"holds {_describe(value)}, which is not hex")
        if len(text) != 2 * size:
            raise ChecksumFormatError(f"holds {_describe(value)}; a hex {algorithm} digest is {2 * size} characters")
        return Digest(algorithm, text.lower())
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ChecksumFormatError(f"holds {_describe(value)}, which is not base64") from None
    if len(data) != size:
        raise ChecksumFormatError(f"holds {_describe(value)}, {len(data)} bytes once decoded; a {algorithm} digest "
                                  f"is {size} bytes ({encoded_length(algorithm, BASE64)} base64 characters)")
    return Digest(algorithm, data.hex())


def encode(digest: Digest, encoding: str):
    """``digest`` as a row would hold it in ``encoding`` (bytes for raw, else text)."""
    data = bytes.fromhex(digest.hex)
    if encoding == RAW:
        return data
    if encoding == BASE64:
        return base64.b64encode(data).decode()
    return digest.hex


def shown(digest: Digest, encoding: str | None) -> str:
    """``digest`` for a message, in the encoding the row holds it (raw bytes as PostgreSQL prints bytea)."""
    if encoding == RAW:
        return f"{digest.algorithm} \\x{digest.hex[:12]}…"
    if encoding == BASE64:
        return f"{digest.algorithm} {encode(digest, BASE64)[:16]}… (base64)"
    return digest.short()


def as_digest(expect: Digest | str | None) -> Digest | None:
    """``expect`` as a :class:`Digest`; a bare string is a sha256 in hex (what stores were always given)."""
    if expect is None or isinstance(expect, Digest):
        return expect
    return Digest(SHA256, expect.lower())
