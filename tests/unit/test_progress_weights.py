"""Progress weighs each step by its work (rows, bytes of blobs, a fixed cost for quick steps), not by its
place in the list of steps."""

from __future__ import annotations

import pytest

from migrator.moves import workflow as wf
from migrator.moves.views import QUICK_WORK, step_work, weighted_fraction
from migrator.moves.watch import duration, rate_line

PLAN = {"tables": {"notes": 600_000, "issues": 400_000}, "rows_total": 1_000_000, "blobs": 1_000,
        "blob_bytes": 100_000_000}


def test_row_steps_cost_rows_blobs_cost_bytes_and_quick_steps_a_fixed_amount():
    assert step_work("copy_rows", PLAN) > step_work("verify", PLAN) > step_work("copy_blobs", PLAN)
    assert step_work("verify", PLAN) == step_work("verify_after_flip", PLAN)
    for quick in ("capture", "freeze", "drain", "final_delta", "verify_changes", "flip", "unfreeze", "catch_up"):
        assert step_work(quick, PLAN) == QUICK_WORK
    # Twice the rows, (nearly) twice the copy's work; the quick steps do not grow.
    bigger = {**PLAN, "rows_total": 2_000_000}
    assert step_work("copy_rows", bigger) == pytest.approx(2 * step_work("copy_rows", PLAN), rel=0.01)
    assert step_work("freeze", bigger) == step_work("freeze", PLAN)
    more_bytes = {**PLAN, "blob_bytes": 10 * PLAN["blob_bytes"]}
    assert step_work("copy_blobs", more_bytes) > 5 * step_work("copy_blobs", PLAN)


def test_online_copy_nearly_done_is_no_longer_a_fifth_of_the_bar():
    """Issue 20: "26 %" meant the online copy was nearly done (copy_rows was 2/13 to 3/13 of the bar)."""
    steps = wf.steps_for("online")
    by_steps = (steps.index("copy_rows") + 0.95) / len(steps)  # what the bar used to say
    fraction, _ = weighted_fraction(steps, PLAN, "copy_rows", 0.95)
    assert by_steps < 0.23 and fraction > by_steps + 0.15


@pytest.mark.parametrize("strategy", list(wf.STRATEGIES))
def test_the_copy_is_the_largest_part_and_the_work_left_is_what_the_fraction_leaves(strategy):
    steps = wf.steps_for(strategy)
    total = sum(step_work(s, PLAN) for s in steps)
    before, _ = weighted_fraction(steps, PLAN, "copy_rows", 0.0)
    after, _ = weighted_fraction(steps, PLAN, "copy_rows", 1.0)
    assert after - before == pytest.approx(max(step_work(s, PLAN) for s in steps) / total)
    fraction, left = weighted_fraction(steps, PLAN, "verify", 0.5)
    assert left == pytest.approx(total * (1 - fraction))


def test_fraction_grows_with_the_work_and_ends_at_one():
    steps = wf.steps_for("online")
    seen = [weighted_fraction(steps, PLAN, step, within)[0] for step in steps for within in (0.0, 0.5, 1.0)]
    assert seen == sorted(seen) and 0 <= seen[0] and seen[-1] == pytest.approx(1.0)
    assert weighted_fraction(steps, PLAN, "verify_after_flip", 0.2, done=True) == (1.0, 0.0)
    # Within a step, what is passed in is clamped (a re-copied range can count rows twice).
    assert weighted_fraction(steps, PLAN, "copy_rows", 1.7) == weighted_fraction(steps, PLAN, "copy_rows", 1.0)


def test_an_empty_plan_weighs_every_step_alike():
    steps = wf.steps_for("frozen")
    fraction, _ = weighted_fraction(steps, {}, "copy_rows")
    assert fraction == pytest.approx(steps.index("copy_rows") / len(steps))


def test_rate_and_eta_as_shown():
    assert rate_line({"fraction": 0.4, "rows_per_s": 12345.6, "eta_s": 185.0}) == "12,346 rows/s, ETA 3 min 05 s"
    assert rate_line({"fraction": 0.1, "rows_per_s": None, "eta_s": None}) == ""
    assert rate_line({"fraction": 1.0, "rows_per_s": 900.0, "eta_s": 0.0}) == "900 rows/s"
    assert duration(None) == "?" and duration(4.4) == "4 s" and duration(7265) == "2 h 01 min"
