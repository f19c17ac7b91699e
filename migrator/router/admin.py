"""HAProxy's admin socket (``stats socket ... level admin``): change its maps at run time, no reload.

Each command is one connection (send a line, read to the end), so after HAProxy reloads the next
command reaches the new process, never a draining old one. Commands used:

- ``set map <file> <key> <value>`` (every entry of the key), ``add map`` when the key is missing;
- ``del map <file> <key>`` (every entry of the key; a missing key is fine);
- ``prepare map`` / ``add map @<version> <file> <<payload`` / ``commit map``: replace a whole map at
  once (HAProxy swaps the versions atomically: a lookup sees the old map or the new one);
- ``show map <file>``, ``show info`` (the process id and uptime: a restart since the last look).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import MigratorError

TIMEOUT_S = 2.0
# A payload must fit HAProxy's command buffer (tune.bufsize, 16 kB by default): this many entries each.
PAYLOAD_ENTRIES = 200
_TCP = re.compile(r"^(?:ipv4@|ipv6@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_NEW_VERSION = re.compile(r"New version created:\s*(\d+)")
_OK = ("",)
# What HAProxy 2.6 answers for a key the map lacks: to `set map`, and to `del map`.
_NOT_FOUND = ("entry not found.", "Key not found.")


class HAProxyUnreachable(MigratorError):
    """The admin socket does not answer (HAProxy down, restarting, or the path/port is wrong)."""

    code = "haproxy_unreachable"


class HAProxyRefused(MigratorError):
    """HAProxy answered a command with an error (e.g. a map its configuration does not load)."""

    code = "haproxy_refused"


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    started_at: float  # wall-clock seconds, from the uptime (to the second)

    def same_process(self, other: ProcessIdentity | None) -> bool:
        return other is not None and self.pid == other.pid and abs(self.started_at - other.started_at) <= 2


def socket_address(address: str, base: Path | None = None) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """(family, target) of an admin socket entry: ``/path``, ``unix:/path`` (relative to ``base``) or
    ``HOST:PORT`` (``[V6]:PORT``; ``ipv4@``/``ipv6@`` prefixes as in HAProxy's own syntax)."""
    match = _TCP.match(address)
    if match and "/" not in address:
        host = match.group(1)
        family = socket.AF_INET6 if host.startswith("[") or address.startswith("ipv6@") else socket.AF_INET
        return family, (host.strip("[]"), int(match.group(2)))
    path = Path(address.removeprefix("unix:"))
    if not path.is_absolute() and base is not None:
        path = base / path
    return socket.AF_UNIX, str(path.resolve())


class AdminSocket:
    """One HAProxy admin socket: ``/path/to/admin.sock`` (or ``unix:/path``) or ``HOST:PORT``."""

    def __init__(self, address: str, *, base: Path | None = None, timeout: float = TIMEOUT_S):
        self.address = address
        self.timeout = timeout
        self._family, self._target = socket_address(address, base)

    def __repr__(self) -> str:
        return f"AdminSocket({self.address!r})"

    @property
    def label(self) -> str:
        return self.address

    def command(self, line: str) -> str:
        """Send one command (``line`` may carry a ``<<`` payload); HAProxy's answer, stripped."""
        data = (line if line.endswith("\n") else line + "\n").encode()
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self._target)
                sock.sendall(data)
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise HAProxyUnreachable(f"HAProxy's admin socket {self.address} does not answer: {exc}",
                                     "is HAProxy running with this `stats socket ... level admin`? "
                                     "(migrator router config writes it)") from None
        return b"".join(chunks).decode(errors="replace").strip()

    def _expect_ok(self, line: str, answer: str, *, allow: tuple[str, ...] = _OK) -> str:
        if answer in allow:
            return answer
        raise HAProxyRefused(f"HAProxy ({self.address}) refused `{line.split(' <<')[0][:120]}`: {answer[:300]}",
                             "check that its configuration loads this map (regenerate it with `migrator router "
                             "config` and reload HAProxy)")

    # -- maps
    def set_entry(self, map_file: Path | str, key: str, value: str) -> None:
        """Point ``key`` at ``value`` (every entry of it), adding the key if the map lacks it."""
        line = f"set map {map_file} {key} {value}"
        answer = self.command(line)
        if answer in _NOT_FOUND:
            line = f"add map {map_file} {key} {value}"
            answer = self.command(line)
        self._expect_ok(line, answer)

    def delete_entry(self, map_file: Path | str, key: str) -> None:
        line = f"del map {map_file} {key}"
        self._expect_ok(line, self.command(line), allow=("", *_NOT_FOUND))

    def show_map(self, map_file: Path | str) -> dict[str, str]:
        line = f"show map {map_file}"
        answer = self.command(line)
        entries: dict[str, str] = {}
        for row in answer.splitlines():
            parts = row.split(" ", 2)
            if len(parts) == 3 and parts[0].startswith("0x"):
                entries[parts[1]] = parts[2]
            elif row.strip():
                self._expect_ok(line, answer)
        return entries

    def replace_map(self, map_file: Path | str, entries: Mapping[str, str]) -> None:
        """Replace the whole map by ``entries`` atomically (prepare, add to the new version, commit)."""
        line = f"prepare map {map_file}"
        answer = self.command(line)
        match = _NEW_VERSION.search(answer)
        if not match:
            self._expect_ok(line, answer, allow=())
        version = match.group(1)
        items = list(entries.items())
        for i in range(0, len(items), PAYLOAD_ENTRIES):
            payload = "".join(f"{k} {v}\n" for k, v in items[i:i + PAYLOAD_ENTRIES])
            line = f"add map @{version} {map_file} <<\n{payload}\n"
            self._expect_ok(line, self.command(line))
        line = f"commit map @{version} {map_file}"
        self._expect_ok(line, self.command(line))

    # -- the process
    def identity(self) -> ProcessIdentity:
        info = {}
        for row in self.command("show info").splitlines():
            key, _, value = row.partition(":")
            info[key.strip()] = value.strip()
        try:
            pid, uptime = int(info["Pid"]), int(info["Uptime_sec"])
        except (KeyError, ValueError):
            raise HAProxyRefused(f"HAProxy ({self.address}) answered `show info` without Pid/Uptime_sec",
                                 "is this an HAProxy admin socket?") from None
        # Whole seconds: the same process gives the same value from one look to the next (+-1 s of rounding).
        return ProcessIdentity(pid, round(time.time() - uptime))
