"""Blob checksums as rows hold them: algorithms, encodings, what the dictionary and schema check say."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest

from migrator.blobs import digest as dg
from migrator.blobs.copier import BlobRef, make_ref
from migrator.blobs.store import DigestMismatch, HashingReader, LocalBlobStore
from migrator.dictionary import Dictionary
from migrator.dictionary.check import BLOB_CHECKSUM, checksum_problem
from migrator.dictionary.model import BlobSpec
from migrator.errors import BlobChecksumMismatch

DATA = b"an object\n" * 100
SHA256 = hashlib.sha256(DATA)
MD5 = hashlib.md5(DATA)  # noqa: S324 - a checksum, as applications use it
SHA1 = hashlib.sha1(DATA)  # noqa: S324


@pytest.mark.parametrize(("value", "algorithm", "encoding", "want"), [
    (SHA256.digest(), "sha256", None, SHA256.hexdigest()),  # bytea: raw, inferred from the value
    (memoryview(SHA256.digest()), "sha256", "raw", SHA256.hexdigest()),
    (SHA256.hexdigest(), "sha256", None, SHA256.hexdigest()),  # text: hex
    (SHA256.hexdigest().upper(), "sha256", "hex", SHA256.hexdigest()),
    (MD5.hexdigest() + "   ", "md5", "hex", MD5.hexdigest()),  # character(35) pads
    (base64.b64encode(MD5.digest()).decode(), "md5", "base64", MD5.hexdigest()),
    (SHA1.digest(), "sha1", None, SHA1.hexdigest()),
])
def test_decode_gives_the_digest_in_hex_whatever_the_encoding(value, algorithm, encoding, want):
    assert dg.decode(value, algorithm, encoding) == dg.Digest(algorithm, want)


@pytest.mark.parametrize(("value", "algorithm", "encoding", "says"), [
    (SHA1.digest(), "sha256", None, "(20 bytes); a raw sha256 digest is 32 bytes"),
    (SHA256.hexdigest(), "md5", None, "(64 characters); a hex md5 digest is 32 characters"),
    ("z" * 64, "sha256", "hex", "which is not hex"),
    (SHA256.hexdigest(), "sha256", "raw", "not raw bytes (bytea)"),
    (SHA256.digest(), "sha256", "hex", "not hex text"),
    ("not base64!", "md5", "base64", "which is not base64"),
    (base64.b64encode(SHA1.digest()).decode(), "md5", "base64", "20 bytes once decoded; a md5 digest is 16 bytes"),
])
def test_decode_refuses_what_cannot_be_the_declared_digest(value, algorithm, encoding, says):
    with pytest.raises(dg.ChecksumFormatError) as exc:
        dg.decode(value, algorithm, encoding)
    assert says in str(exc.value)


def test_encode_is_decode_reversed_and_messages_show_the_rows_encoding():
    d = dg.hash_bytes(DATA, "md5")
    for encoding in dg.ENCODINGS:
        assert dg.decode(dg.encode(d, encoding), "md5", encoding) == d
    assert dg.shown(dg.hash_bytes(DATA), "raw") == f"sha256 \\x{SHA256.hexdigest()[:12]}…"
    assert dg.as_digest(SHA256.hexdigest().upper()) == dg.Digest("sha256", SHA256.hexdigest())


@pytest.mark.parametrize(("column_type", "allowed", "limit"), [
    ("bytea", ("raw",), None), ("text", ("hex", "base64"), None), ("character varying(64)", ("hex", "base64"), 64),
    ("character(32)", ("hex", "base64"), 32), ("integer", (), None), ("uuid", (), None),
])
def test_encodings_follow_the_column_type(column_type, allowed, limit):
    assert dg.encodings_for_type(column_type) == allowed
    assert dg.text_limit(column_type) == limit


def test_hashing_reader_checks_the_declared_algorithm_and_still_hashes_sha256():
    reader = HashingReader(io.BytesIO(DATA), "k", dg.hash_bytes(DATA, "md5"))
    assert reader.read(10_000) == DATA
    assert reader.hexdigest() == SHA256.hexdigest() and reader.digest().hex == MD5.hexdigest()
    wrong = HashingReader(io.BytesIO(DATA), "k", dg.Digest("md5", "0" * 32))
    with pytest.raises(DigestMismatch) as exc:
        while wrong.read(100):
            pass
    assert exc.value.algorithm == "md5" and exc.value.digest == MD5.hexdigest()


def test_a_local_store_stores_nothing_that_does_not_hash_to_the_declared_digest(tmp_path):
    src, dst = LocalBlobStore(tmp_path / "src"), LocalBlobStore(tmp_path / "dst")
    src.put_bytes("a/b", DATA)
    md5 = dg.Digest("md5", MD5.hexdigest())
    got = dst.receive(src, "a/b", expect=md5)
    assert got.written == len(DATA) and got.sha256 == SHA256.hexdigest()
    assert dst.receive(src, "a/b", expect=md5).skipped  # already there with that md5
    assert dst.holds("a/b", dg.Digest("sha1", SHA1.hexdigest()))
    with pytest.raises(DigestMismatch):
        dst.receive(src, "a/b", expect=dg.Digest("sha1", "0" * 40))
    with pytest.raises(DigestMismatch):
        LocalBlobStore(tmp_path / "other").receive(src, "a/b", expect=dg.Digest("md5", "1" * 32))
    assert list(LocalBlobStore(tmp_path / "other").keys()) == []


def test_make_ref_decodes_the_rows_checksum_and_names_the_row_when_it_cannot():
    spec = BlobSpec("file_key", "file_sha256")
    ref = make_ref("packages", [13], "packages/13/0.tgz", SHA256.digest(), 12, spec)
    assert ref == BlobRef("packages", [13], "packages/13/0.tgz", SHA256.hexdigest(), 12, "sha256", "raw")
    assert ref.digest == dg.Digest("sha256", SHA256.hexdigest())
    assert make_ref("uploads", [1], "k", None, None, BlobSpec("k", None)).digest is None
    with pytest.raises(BlobChecksumMismatch) as exc:
        make_ref("packages", [13], "packages/13/0.tgz", SHA1.digest(), 12, spec)
    message = exc.value.message
    assert "blob 'packages/13/0.tgz' (packages row (13)): checksum column packages.file_sha256 holds" in message
    assert "a raw sha256 digest is 32 bytes" in exc.value.message and "algorithm" in exc.value.hint


@pytest.mark.parametrize(("spec", "column_type", "says", "hint"), [
    (BlobSpec("k", "c", encoding="hex"), "bytea", "is bytea, but the dictionary declares encoding: hex",
     "declare encoding: raw for uploads.c"),
    (BlobSpec("k", "c", encoding="raw"), "text", "is text, but the dictionary declares encoding: raw",
     "declare encoding: hex or encoding: base64 for uploads.c"),
    (BlobSpec("k", "c"), "integer", "is integer: a checksum is compared as raw bytes", "or leave checksum out"),
    (BlobSpec("k", "c"), "character varying(32)", "at most 32 characters, but a sha256 digest in hex takes 64",
     "(algorithm: md5)"),
])
def test_schema_check_refuses_a_checksum_the_copier_could_not_compare(spec, column_type, says, hint):
    problem = checksum_problem("uploads", spec, column_type, "dictionary.yaml")
    assert problem is not None and problem.kind == BLOB_CHECKSUM and problem.column == "c"
    assert says in problem.message and f"blob checksum column uploads.c is {column_type}" in problem.message
    assert hint in problem.hint


@pytest.mark.parametrize(("spec", "column_type"), [
    (BlobSpec("k", "c"), "bytea"), (BlobSpec("k", "c", algorithm="md5"), "character(32)"),
    (BlobSpec("k", "c", encoding="base64"), "character varying(44)"), (BlobSpec("k", "c"), "text"),
])
def test_schema_check_accepts_what_the_copier_can_compare(spec, column_type):
    assert checksum_problem("uploads", spec, column_type) is None


def test_the_dictionary_reads_algorithm_encoding_and_computed_keys():
    d = Dictionary.from_mapping({"root": "orgs", "tables": {
        "orgs": {"root": True},
        "packages": {"sharding_key": {"org_id": "orgs"}, "blobs": [
            {"key": "file_key", "checksum": "file_sha256"},
            {"key": "meta_key", "checksum": "meta_md5", "algorithm": "md5", "encoding": "base64"},
            {"key_sql": "'@hashed/' || id", "name": "repo"},
        ]}}})
    blobs = d.tables["packages"].blobs
    assert blobs[0] == BlobSpec("file_key", "file_sha256") and blobs[0].algorithm == "sha256"
    assert blobs[0].encoding is None and blobs[1].algorithm == "md5" and blobs[1].encoding == "base64"
    assert blobs[2].key is None and blobs[2].checksum is None and blobs[2].label == "repo"
    again = Dictionary.from_mapping(d.as_dict())
    assert again.tables["packages"].blobs == blobs
