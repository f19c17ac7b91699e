"""verify_catch_up (online strategy, before the freeze): bring the verification up to date while the
organization still writes.

The full verification takes a while (28 s for 2M rows), and every key the organization changes
meanwhile is left to the write window: ``final_delta`` applies it and ``verify_changes`` compares it by
key. At 150 writes/s that was 3,494 keys and 2.4 s of window for a 2M-row organization. This step does
that work before the freeze, in rounds: a catch-up round (the log applied up to a new source snapshot),
then every key logged between the verified snapshot and the new one compared by key on both sides,
leaving out the keys changed since the new snapshot (read in the same REPEATABLE READ snapshot as the
source's rows, as ``verify`` does); the new snapshot becomes the verified one. It stops once at most
``online.max_delta_keys`` keys are left to the window, or after ``MAX_ROUNDS``.

A key set that differs is not concluded on here: the verified snapshot stays where it was, so
``verify_changes`` compares (and re-applies) those keys inside the window, and fails the move before
the flip if they still differ. docs/adr/0012-the-write-window.md.
"""

from __future__ import annotations

import json

from migrator.cells import capture as cap
from migrator.moves.change_log import apply_round, capture_id
from migrator.moves.steps.base import Step
from migrator.verify.checksums import keys_checksum

MAX_ROUNDS = 5


def _compare(ctx, since: str | None, cur: str) -> dict[str, int] | None:
    """Keys logged between snapshots ``since`` and ``cur``, compared by key on both sides, those changed
    after ``cur`` left out: the keys compared per table, or None when a table differs."""
    src, tgt = ctx.source(), ctx.target()
    cid = capture_id(ctx.move)
    compared: dict[str, int] = {}
    for table in ctx.copy_order():
        spec = ctx.specs[table]
        with src.transaction():
            src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            keys = cap.logged_keys(src, cid, table, prev=since, cur=cur)
            if not keys:
                continue
            in_flux = {json.dumps(k) for k in cap.logged_keys(src, cid, table, prev=cur)}
            keys = [k for k in keys if json.dumps(k) not in in_flux]
            if not keys:
                continue
            source = keys_checksum(src, spec, ctx.org, keys)
        # The target holds what the round applied; nothing else writes it before the freeze.
        if keys_checksum(tgt, spec, ctx.org, keys) != source:
            return None
        compared[table] = len(keys)
    return compared


def run(ctx) -> None:
    limit = ctx.settings.online.max_delta_keys
    cid = capture_id(ctx.move)
    rounds: list[dict] = []
    left = 0
    for _ in range(MAX_ROUNDS):
        since = ctx.store.get(ctx.move.id).verified_snapshot
        left = cap.pending_keys(ctx.source(), cid, since)
        if left <= limit:
            break
        done = apply_round(ctx)  # moves capture_snapshot to done.snapshot
        compared = _compare(ctx, since, done.snapshot)
        ctx.heartbeat()
        if compared is None:
            ctx.event("verify_catch_up", "mismatch", "keys changed during the verification differ after a catch-up "
                      "round; verify_changes compares and applies them again inside the window")
            break
        ctx.store.set_fields(ctx.move.id, ctx.token, verified_snapshot=done.snapshot)
        rounds.append({"keys_applied": done.keys, "keys_compared": sum(compared.values()),
                       "seconds": round(done.seconds, 3)})
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"verify_catch_up": {
        "rounds": rounds, "keys_left_to_the_window": left}})


STEP = Step("verify_catch_up", run=run,
            summary="catch up and compare by key what changed during the verification, before the freeze (online)")
