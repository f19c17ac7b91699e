"""``migrator router check``: does each HAProxy route as the Topology Service says?"""

from __future__ import annotations

from pathlib import Path

from migrator.errors import MigratorError
from migrator.router.admin import AdminSocket
from migrator.router.maps import MapFiles, frozen_entries, orgs_entries

EXAMPLES = 5


def compare(want: dict[str, str], have: dict[str, str]) -> tuple[int, int, int, list[str]]:
    """(missing, extra, different, examples) of ``have`` against ``want``."""
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    different = [k for k, v in want.items() if k in have and have[k] != v]
    examples = ([f"{k}: missing (want {want[k]})" for k in missing[:EXAMPLES]]
                + [f"{k}: extra ({have[k]})" for k in extra[:EXAMPLES]]
                + [f"{k}: {have[k]}, want {want[k]}" for k in different[:EXAMPLES]])
    return len(missing), len(extra), len(different), examples[:EXAMPLES]


def compare_all(settings, sockets: list[str] | None = None) -> dict:
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    client = topology_client(settings)
    try:
        routes = client.list_routes()
    finally:
        client.close()
    want_orgs, want_frozen = orgs_entries(routes), frozen_entries(routes)
    files = MapFiles.from_settings(settings)
    base = Path(settings.config_path).parent if settings.config_path else None
    out = []
    for address in sockets or settings.router.admin_sockets:
        sock = AdminSocket(address, base=base)
        try:
            have_orgs, have_frozen = sock.show_map(files.orgs), sock.show_map(files.frozen)
        except MigratorError as exc:
            out.append({"haproxy": address, "error": exc.message})
            continue
        m1, e1, d1, ex1 = compare(want_orgs, have_orgs)
        m2, e2, d2, ex2 = compare(want_frozen, have_frozen)
        out.append({"haproxy": address, "routes": len(have_orgs), "frozen": len(have_frozen),
                    "missing": m1 + m2, "extra": e1 + e2, "different": d1 + d2,
                    "examples": [f"orgs.map {e}" for e in ex1] + [f"frozen.map {e}" for e in ex2]})
    ok = all(not r.get("error") and not (r["missing"] or r["extra"] or r["different"]) for r in out)
    return {"ok": ok, "routes": len(want_orgs), "frozen": len(want_frozen), "haproxy": out}
