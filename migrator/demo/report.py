"""The demo's closing report: what moved, how it was verified, and how the route changed.

``build_report`` gathers it as plain data (``migrator demo --json`` prints exactly that);
``print_report`` shows it as tables: per table the rows and the in-database checksums on both
sides, the blobs, the write window, and the organization's route before and after the move.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from rich.console import Console
from rich.table import Table

from migrator.moves import workflow as wf
from migrator.moves.views import move_detail


def _seconds(start, end) -> float | None:
    if isinstance(start, str):
        start = dt.datetime.fromisoformat(start)
    if isinstance(end, str):
        end = dt.datetime.fromisoformat(end)
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def build_report(store, move, *, route_before, route_after, route_history: list[dict], seeded: list) -> dict:
    """Everything the demo shows at the end, as plain data; ``ok`` is the demo's verdict."""
    detail = move_detail(store, move)
    report = detail.get("report") or {}
    verification = report.get("verification") or {}
    plan = detail.get("plan") or {}
    tables = {
        name: {k: v.get(k) for k in ("source_rows", "target_rows", "source_checksum", "target_checksum", "ranges",
                                      "match")}
        for name, v in (verification.get("tables") or {}).items()
    }
    before = dataclasses.asdict(route_before) if route_before is not None else None
    after = dataclasses.asdict(route_after) if route_after is not None else None
    verified = bool(verification.get("ok")) and bool(tables) and all(t["match"] for t in tables.values())
    flips = [h for h in route_history if h.get("action") == "flip"]
    ok = (detail["state"] == wf.COMPLETED and verified and after is not None
          and after["cell"] == detail["target"] and after["state"] == "active" and len(flips) == 1)
    return {
        "ok": ok,
        "move_id": detail["id"],
        "organization_id": detail["organization_id"],
        "source": detail["source"],
        "target": detail["target"],
        "state": detail["state"],
        "error": detail.get("error"),
        "verified": verified,
        "tables": tables,
        "rows": {"source": sum(t["source_rows"] or 0 for t in tables.values()),
                 "target": sum(t["target_rows"] or 0 for t in tables.values()),
                 "planned": plan.get("rows_total")},
        "blobs": {"planned": plan.get("blobs"), "bytes": plan.get("blob_bytes"),
                  "verified": verification.get("blobs_verified")},
        "recopied_ranges": verification.get("recopied_ranges") or [],
        "write_window_s": detail.get("write_window_s"),
        "duration_s": _seconds(detail.get("created_at"), detail.get("completed_at")),
        "route_before": before,
        "route_after": after,
        "route_history": route_history,
        "seeded": [s.as_dict() if hasattr(s, "as_dict") else s for s in seeded],
    }


def _route(route: dict | None) -> str:
    if route is None:
        return "(unknown)"
    return f"{route['cell']} (version {route['version']}, {route['state']})"


def print_report(data: dict, console: Console) -> None:
    def line(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)

    verdict = "[bold green]VERIFIED[/]" if data["ok"] else "[bold red]NOT VERIFIED[/]"
    console.print()
    line(f"[bold]move {data['move_id']}[/]: organization {data['organization_id']} "
                  f"{data['source']} -> {data['target']}: {data['state']}, {verdict}")
    if data.get("error"):
        line(f"[red]error:[/] {data['error']}")
    if data["tables"]:
        t = Table(title="verification: rows and in-database checksum per table, both sides")
        # On a narrow terminal the checksums are shortened (with "…"); --json has them in full.
        t.add_column("table", no_wrap=True, min_width=14)
        t.add_column("rows\nsource", justify="right", no_wrap=True, min_width=6)
        t.add_column("rows\ntarget", justify="right", no_wrap=True, min_width=6)
        t.add_column("checksum\nsource", justify="right", overflow="ellipsis", min_width=8)
        t.add_column("checksum\ntarget", justify="right", overflow="ellipsis", min_width=8)
        t.add_column("ok", justify="center", no_wrap=True, min_width=3)
        for name, v in data["tables"].items():
            t.add_row(name, f"{v['source_rows']:,}", f"{v['target_rows']:,}", str(v["source_checksum"]),
                      str(v["target_checksum"]), "yes" if v["match"] else "[red]NO")
        t.add_row("[bold]total", f"[bold]{data['rows']['source']:,}", f"[bold]{data['rows']['target']:,}", "", "",
                  "[bold]yes" if data["verified"] else "[bold red]NO")
        console.print(t)
    blobs = data["blobs"]
    line(f"blobs: {blobs['planned'] or 0:,} referenced ({blobs['bytes'] or 0:,} bytes), "
                  f"{blobs['verified'] or 0:,} verified by sha256 in {data['target']}'s store")
    if data.get("recopied_ranges"):
        line(f"ranges re-copied after a mismatch: {', '.join(data['recopied_ranges'])}")
    window = data.get("write_window_s")
    duration = data.get("duration_s")
    line(f"write window (frozen -> writable on {data['target']}): "
                  + (f"{window:.2f} s" if window is not None else "(not measured)")
                  + (f"; whole move {duration:.2f} s" if duration is not None else ""))
    line(f"route before: organization {data['organization_id']} -> {_route(data['route_before'])}")
    line(f"route after:  organization {data['organization_id']} -> {_route(data['route_after'])}")
    if data["route_history"]:
        h = Table(title="route history (Topology Service)")
        for col in ("at", "action", "from", "to", "version", "actor"):
            h.add_column(col, no_wrap=col != "actor", overflow="ellipsis")
        for e in data["route_history"]:
            h.add_row(str(e.get("at", ""))[11:23], e.get("action", ""), e.get("from_cell") or "",
                      e.get("to_cell") or "", str(e.get("version", "")), e.get("actor") or "")
        console.print(h)
