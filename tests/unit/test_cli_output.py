"""How the CLI shows times (always with seconds) and move ids (prefixes `migrator status` takes)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from migrator.cli.render import ago, clock, id_prefixes

# ------------------------------------------------------------------------------------------ times

def test_today_is_a_clock_and_other_days_a_date_both_with_seconds():
    now = dt.datetime.now().astimezone()
    earlier = (now - dt.timedelta(days=3)).replace(microsecond=123456)
    assert re.fullmatch(r"\d\d:\d\d:\d\d", clock(now, now=now))
    assert clock(now.isoformat(), now=now) == now.strftime("%H:%M:%S")
    assert clock(earlier, now=now) == earlier.strftime("%Y-%m-%d %H:%M:%S")
    assert clock(earlier.astimezone(dt.UTC).isoformat(), now=now) == earlier.strftime("%Y-%m-%d %H:%M:%S")
    assert clock(None) == "" and clock("") == ""


@pytest.mark.parametrize("seconds, shown", [
    (0, "0 s ago"), (12.7, "12 s ago"), (119, "119 s ago"), (120, "2 min ago"), (7199, "119 min ago"),
    (7200, "2 h ago"), (3 * 86400, "3 d ago"), (None, ""),
])
def test_ages(seconds, shown):
    assert ago(seconds) == shown


def test_id_prefixes_are_eight_digits_or_longer_when_shared():
    ids = ["7ba1dc12-0000-4000-8000-000000000001", "7ba1dc12-9000-4000-8000-000000000002",
           "0123abcd-0000-4000-8000-000000000003"]
    shown = id_prefixes(ids)
    assert shown[ids[2]] == "0123abcd"
    assert shown[ids[0]] == "7ba1dc12-0" and shown[ids[1]] == "7ba1dc12-9"
