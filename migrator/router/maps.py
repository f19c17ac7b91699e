"""The router's two HAProxy maps, computed from routes, and their files.

- ``orgs.map``: ``<organization id> <cell>`` for every route; HAProxy picks backend ``cell_<cell>``.
- ``frozen.map``: ``<organization id> <cell>`` for every frozen route; HAProxy answers its writes
  (anything but GET, HEAD, OPTIONS) with 503 and Retry-After.

Files are replaced atomically (written next to the old one, flushed, renamed over it), so an HAProxy
starting at any moment reads either the old map or the new one, whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from migrator.atomic_file import write_text
from migrator.topology.routes import RouteInfo

ORGS_MAP = "orgs.map"
FROZEN_MAP = "frozen.map"
BACKEND_PREFIX = "cell_"


@dataclass(frozen=True)
class MapFiles:
    """Where the two maps live (the paths HAProxy's configuration names, and its admin socket uses)."""

    directory: Path

    @property
    def orgs(self) -> Path:
        return self.directory / ORGS_MAP

    @property
    def frozen(self) -> Path:
        return self.directory / FROZEN_MAP

    @classmethod
    def from_settings(cls, settings) -> MapFiles:
        return cls(settings.resolve_path(settings.router.map_dir).resolve())


def orgs_entries(routes: Iterable[RouteInfo]) -> dict[str, str]:
    return {str(r.organization_id): r.cell for r in routes}


def frozen_entries(routes: Iterable[RouteInfo]) -> dict[str, str]:
    return {str(r.organization_id): r.cell for r in routes if r.frozen}


def render(entries: Mapping[str, str], header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [f"{key} {value}" for key, value in sorted(entries.items(), key=lambda kv: (len(kv[0]), kv[0]))]
    return "\n".join(lines) + "\n" if lines else ""


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader sees the old file or the new one, never a part."""
    write_text(path, text, mode=0o644)


def ensure_files(files: MapFiles) -> list[Path]:
    """Create empty map files where none exist (HAProxy refuses to start without them); the ones made."""
    made = []
    for path in (files.orgs, files.frozen):
        if not path.exists():
            write_atomically(path, "")
            made.append(path)
    return made


def read_map_file(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        entries[key] = value.strip()
    return entries
