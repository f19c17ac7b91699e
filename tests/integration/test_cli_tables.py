"""What an operator reads at 80 columns after a real move: the move list, one move (with its plan), the
route's history and the cells; `--wide` for every column. And the dry run of each strategy."""

from __future__ import annotations

import json
import re

import psycopg
import pytest
from typer.testing import CliRunner

from migrator.cli.main import build_app
from migrator.sample.seed import seed_organizations
from tests.integration.test_move_e2e import migrator

pytestmark = pytest.mark.integration

WIDTH = 80
# Anything that looks like a time of day: it must be a whole HH:MM:SS.
TIME = re.compile(r"\d+:\d+(?::\d+)?")


def render(*args, width: int = WIDTH, code: int = 0) -> str:
    result = CliRunner().invoke(build_app(), list(args), env={"COLUMNS": str(width)}, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout


def assert_fits(text: str, dates: bool = False) -> None:
    """No line over 80 columns, every time a whole HH:MM:SS (dated when ``dates``), nothing cut."""
    lines = text.splitlines()
    too_long = [line for line in lines if len(line) > WIDTH]
    assert not too_long, "\n".join(too_long)
    times = TIME.findall(text)
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times), times
    assert not re.search(r"\d{4}-\d\d-\d\dT", text), text  # no ISO timestamps
    if not dates:
        assert "…" not in text, text
    else:  # dates are wider: secondary columns may be shortened, never an id or a time
        for line in lines:
            for cell in re.split(r"\s{2,}", line.strip()):
                assert not ("…" in cell and (TIME.search(cell) or re.fullmatch(r"[0-9a-f-]+…", cell))), line


@pytest.fixture
def moved(provisioned, worker):
    settings = provisioned.settings()
    (org,) = seed_organizations(settings, "cell-1", orgs=1, rows=600, blobs=2, skew=False, seed=20)
    org = org.organization_id
    # The dry run of each strategy first: estimates, nothing recorded.
    dry = {}
    for strategy in ("online", "frozen"):
        text = render("move", "--org", str(org), "--to", "cell-2", "--dry-run", "--strategy", strategy)
        assert f"strategy {strategy}: estimated duration" in text and "write window" in text, text
        assert_fits(text)
        dry[strategy] = json.loads(render("move", "--org", str(org), "--to", "cell-2", "--dry-run", "--strategy",
                                          strategy, "--json"))
    result = migrator(provisioned, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json",
                      "--reason", "a move to read about at 80 columns")
    assert result.returncode == 0, result.stderr + result.stdout
    return org, json.loads(result.stdout), dry


def test_tables_fit_80_columns_and_wide_shows_everything(moved, provisioned):
    org, detail, dry = moved
    fleet = provisioned

    # The dry run honours --strategy: the online window is the final delta's, the frozen one the whole move.
    assert dry["online"]["strategy"] == "online" and dry["frozen"]["strategy"] == "frozen"
    assert dry["frozen"]["write_window_estimate_s"] == dry["frozen"]["estimate_s"]
    assert dry["online"]["write_window_estimate_s"] != dry["frozen"]["write_window_estimate_s"]
    assert dry["online"]["write_window_estimate_s"] < dry["online"]["estimate_s"]
    assert detail["plan"]["strategy"] == detail["strategy"] == "online"
    assert detail["plan"]["write_window_estimate_s"] == dry["online"]["write_window_estimate_s"]

    # The move list: one line per move, an id prefix that `migrator status` takes.
    listing = render("status")
    assert_fits(listing)
    rows = [line for line in listing.splitlines() if "completed" in line]
    assert len(rows) == 1, listing
    prefix = rows[0].split()[0]
    assert 8 <= len(prefix) < 36 and detail["id"].startswith(prefix), listing
    assert str(org) in rows[0] and TIME.search(rows[0]), listing
    assert json.loads(render("status", prefix, "--json"))["id"] == detail["id"]
    wide = render("status", "--wide", width=200)
    assert detail["id"] in wide and "requested by" in wide and "strategy" in wide and " ago" in wide, wide

    # One move: its plan, its verification and its history with every time as HH:MM:SS.
    one = render("status", prefix)
    assert_fits(one)
    assert "plan" in one and "total" in one and "strategy online: estimated duration" in one, one
    assert "verification" in one and "history" in one and "flip" in one, one
    history = one[one.index("history"):]
    assert len(TIME.findall(history)) >= len(detail["history"]), history
    wide = render("status", prefix, "--wide", width=200)
    assert "actor" in wide and "source checksum" in wide, wide

    # The route's history.
    route = render("topology", "history", str(org))
    assert_fits(route)
    assert "flip" in route and "cell-2" in route and len(TIME.findall(route)) >= 3, route
    wide = render("topology", "history", str(org), "--wide", width=200)
    assert "token (sha256)" in wide and "actor" in wide, wide

    # A move of two days ago: its times become dates, still with their seconds, and the list still fits.
    with psycopg.connect(fleet.control_dsn, autocommit=True) as conn:
        conn.execute("UPDATE moves SET created_at = created_at - interval '2 days' WHERE id = %s", (detail["id"],))
        conn.execute("UPDATE move_events SET at = at - interval '2 days' WHERE move_id = %s", (detail["id"],))
    for text in (render("status"), render("status", prefix)):
        assert_fits(text, dates=True)
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
    assert prefix in render("status")

    # The cells.
    cells = render("cells", "list")
    assert_fits(cells)
    assert all(f"cell-{n}" in cells for n in (1, 2, 3)) and "sequence range" not in cells, cells
    wide = render("cells", "list", "--wide", width=200)
    assert "sequence range" in wide, wide
