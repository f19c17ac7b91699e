"""A real S3-compatible server for tests and benchmarks: moto's standalone server (``moto_server``, from the
``moto[server]`` dev dependency) as a process on a loopback port, reached over HTTP like any object store.
Never an in-process mock.

moto keeps objects in memory. With ``record=True`` its recorder (``MOTO_ENABLE_RECORDING``) appends every
request to a file and :meth:`MotoServer.restart` replays that file into the new process, so a server
that was stopped comes back with the objects it had, as a real object store would. The recording is
also the server's own account of what each client wrote (:meth:`MotoServer.writes`).

:class:`TcpProxy` sits between a client and the server: it counts the bytes each way and can refuse
or answer ``503 Slow Down`` to the next connections (transient faults over real HTTP).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from migrator.fleet.processes import BIN, Process, ProcessExited, free_port, wait_for
from migrator.fleet.services import ServerProcess

# Credentials for the test server (moto accepts any); the worker processes inherit them.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def use_test_credentials(monkeypatch=None) -> None:
    """Put the test credentials into the environment (of this process and the ones it starts)."""
    for key, value in TEST_CREDENTIALS.items():
        if monkeypatch is not None:
            monkeypatch.setenv(key, value)
        else:
            os.environ[key] = value


class MotoServer(ServerProcess):
    """``moto_server -H 127.0.0.1 -p PORT`` in its own process."""

    def __init__(self, workdir: Path, port: int | None = None, *, record: bool = False):
        super().__init__(workdir, port)
        self.record = record
        self.recording = self.workdir / "moto-recording.jsonl"
        self.log_path = self.workdir / "moto.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **TEST_CREDENTIALS}
        if self.record:
            env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(self.recording))
        self.proc = Process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], env, self.log_path,
                            cwd=self.workdir).start()

        def up() -> bool:
            if not self.proc.alive():
                raise ProcessExited(f"moto_server exited:\n{self.proc.log()[-2000:]}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True

        wait_for(up, timeout=60, what="moto_server")
        return self

    def restart(self) -> None:
        """Start again on the same port; with ``record``, replay what the stopped server had received."""
        super().restart()
        if self.record and self.recording.exists():
            # deferred: requests only to replay a recording
            import requests

            requests.post(f"{self.endpoint_url}/moto-api/recorder/replay-recording", timeout=120).raise_for_status()

    def recorded_lines(self) -> int:
        return len(self.recording.read_text().splitlines()) if self.recording.exists() else 0

    def writes(self, bucket: str, since: int = 0) -> list[tuple[str, str]]:
        """(method, key) of every write request (PUT/POST: objects, parts, copies, uploads) the server
        received for ``bucket``, from recorded line ``since`` on."""
        out = []
        lines = self.recording.read_text().splitlines()[since:] if self.recording.exists() else []
        for line in lines:
            entry = json.loads(line)
            if entry["method"] not in ("PUT", "POST"):
                continue
            path = urlparse(entry["url"]).path.lstrip("/")
            name, _, key = path.partition("/")
            if name == bucket and key:
                out.append((entry["method"], key))
        return out

    def client(self):
        # deferred: boto3 is slow to import and only S3 stores need it
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_buckets(self, *names: str) -> None:
        client = self.client()
        for name in names:
            client.create_bucket(Bucket=name)


def s3_blobs(server: MotoServer, bucket: str, **extra) -> dict:
    """A cell's ``blobs:`` config for a bucket on ``server`` (small multipart sizes: tests stay small)."""
    return {"kind": "s3", "bucket": bucket, "endpoint_url": server.endpoint_url, "region": "us-east-1",
            "multipart_threshold_mb": 5, "multipart_chunk_mb": 5, "retry_attempts": 2, "connect_timeout_s": 2,
            "read_timeout_s": 10, **extra}


class TcpProxy:
    """A loopback TCP proxy to ``target_port``: counts bytes each way; can fail the next connections.

    ``fail_next(n, how)``: the next ``n`` connections are answered ``503 Slow Down`` (``how="503"``) or
    reset at once (``how="reset"``), then connections pass through again.
    """

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self.to_server = self.to_client = 0
        self.failed = 0
        self._fail: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def fail_next(self, n: int, how: str = "503") -> None:
        with self._lock:
            self._fail.extend([how] * n)

    def reset_counts(self) -> None:
        with self._lock:
            self.to_server = self.to_client = 0

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                how = self._fail.pop(0) if self._fail else None
            if how is not None:
                self.failed += 1
                threading.Thread(target=self._refuse, args=(client, how), daemon=True).start()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _refuse(self, client: socket.socket, how: str) -> None:
        try:
            if how == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            else:
                client.settimeout(2)
                client.recv(65536)  # the request line and headers
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>")
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            client.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.to_server += len(data)
                    else:
                        self.to_client += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

