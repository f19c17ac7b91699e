"""Requests follow the flip: HAProxy in front of three cells' sample applications, fed by `migrator router sync`.

    .venv/bin/python benchmarks/router.py [--online-moves 20] [--frozen-moves 5] [--rate 240] [--rows 2000]
                                          [--bystanders 2] [--workers 2] [--json out.json]

A throwaway fleet (benchmarks/_fleet.py: three cells, the Topology Service with mutual TLS, Celery
workers) gets its edge as deployed (tests/support/edge.py): `migrator sample-app serve` per cell,
HAProxy configured by `migrator router config`, `migrator router sync` as a reader. One organization
moves cell-1 -> cell-2 -> cell-3 -> cell-1 ... (each source copy cleaned up once the route has
propagated), ``--frozen-moves`` frozen and ``--online-moves`` online, while:

- a client (tests/support/traffic.py) sends ``--rate`` requests/s through HAProxy, half to the moving
  organization, half to bystanders in every cell: creates, updates, deletes and reads of notes, each
  503 retried after its Retry-After. Afterwards every acknowledged write is looked up in the
  organization's final cell. Targets: writes acknowledged but missing 0, reads failed 0, answers other
  than 2xx and 503-with-Retry-After 0;
- a prober hears each route change of the moving organization as it commits (a LISTEN on the Topology
  Service's channel, like the service's own stream) and polls HAProxy's route probe (the same map
  lookup its routing uses, in the same process) and an application's route lookup cache until they
  show it: route propagation, flip committed -> HAProxy sends the organization's requests to the new
  cell. Target p99 <= 100 ms (moonshot <= 10 ms);
- an overhead probe reads a bystander's note through HAProxy and straight from its cell's application,
  alternately, in the same run: HAProxy's added latency (p50, p99).

Then it times the route lookup cache (p99 < 1 ms) and `migrator topology classify` (< 300 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path (benchmarks/concurrent.py would hide the
# standard library's ``concurrent``): put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks._fleet import bench_fleet, machine, stop_on_signals, wait_moves  # noqa: E402
from migrator.fleet.processes import BIN  # noqa: E402

CELLS = ["cell-1", "cell-2", "cell-3"]


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


class KeepAlive:
    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str, headers: dict) -> tuple[int, str]:
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read().decode()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            raise


class FlipProber:
    """Times each change of ``org`` from its commit (heard on LISTEN) until HAProxy and a lookup cache show it.

    Runs in a process of its own (:func:`_prober_main`), away from the client's threads, so that
    neither the moment it hears a change nor the moment it sees it at the edge waits for the GIL."""

    def __init__(self, dsn: str, channel: str, port: int, config_path: Path, env: dict, org: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.records: list[dict] = []
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_prober_main, args=(dsn, channel, port, str(config_path), env, org,
                                                            self._queue, self._stop), daemon=True)
        self._collector = threading.Thread(target=self._collect, daemon=True)

    def start(self) -> FlipProber:
        self._proc.start()
        first = self._queue.get(timeout=60)
        if first != "ready":
            raise RuntimeError(f"the prober did not start: {first}")
        self._collector.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(15)
        if self._proc.is_alive():
            self._proc.kill()

    def _collect(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self._proc.is_alive():
                    return
                continue
            self.records.append(item)

    def wait_for(self, revision_at_least: int, action: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in list(self.records):
                if r["action"] == action and r["revision"] >= revision_at_least:
                    return r
            time.sleep(0.02)
        raise TimeoutError(f"no {action} at revision >= {revision_at_least} was probed")


def _prober_main(dsn, channel, port, config_path, env, org, out, stop) -> None:
    """The prober's process: a LISTEN thread stamps each change of ``org`` as it arrives; the main thread
    polls the route probe of HAProxy and a RouteLookup of its own until both show it."""
    os.environ.update(env)
    import psycopg
    from psycopg import sql

    from migrator.config import load_settings
    from migrator.topology.lookup import RouteLookup
    from migrator.topology.notify import parse_change

    heard_q: queue.Queue = queue.Queue()
    ready = threading.Event()

    def listen() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            ready.set()
            while not stop.is_set():
                for note in conn.notifies(timeout=0.5):
                    heard = time.perf_counter()
                    change = parse_change(note.payload)
                    if change is not None and change.organization_id == org:
                        heard_q.put((heard, time.time(), change))

    threading.Thread(target=listen, daemon=True).start()
    lookup = RouteLookup.from_settings(load_settings(config_path)).start()
    if not (ready.wait(10) and lookup.wait_synced(30)):
        out.put("the prober could not LISTEN or sync its lookup")
        return
    out.put("ready")
    http = KeepAlive(port)
    headers = {"X-Organization-Id": str(org)}
    # Every change heard and not yet seen at both places is timed at once (no change waits for another):
    # each round reads the lookup cache and probes HAProxy once, then marks what it showed. A change counts
    # as seen once the state it made, or a state a later change made, shows.
    outstanding: list[dict] = []
    while not stop.is_set():
        try:
            while True:
                heard, wall, change = heard_q.get(timeout=0.2) if not outstanding else heard_q.get_nowait()
                if change.action not in ("freeze", "flip", "unfreeze"):
                    continue
                for o in outstanding:
                    o["seen"].add((change.cell, change.state))
                outstanding.append({"change": change, "heard": heard, "at": wall, "seen": {(change.cell, change.state)},
                                    "haproxy_s": None, "lookup_s": None, "probes": 0})
        except queue.Empty:
            pass
        if not outstanding:
            continue
        route = lookup.route(org)
        cached_at = time.perf_counter()
        status, body = http.get("/_migrator/route", headers)
        probed_at = time.perf_counter()
        edge_state = tuple(body.split()) if status == 200 else None
        for o in outstanding:
            o["probes"] += 1
            if o["lookup_s"] is None and ((route.cell, route.state) in o["seen"]
                                          or route.revision > o["change"].revision):
                o["lookup_s"] = cached_at - o["heard"]
            if o["haproxy_s"] is None and edge_state in o["seen"]:
                o["haproxy_s"] = probed_at - o["heard"]
        for o in [o for o in outstanding if (o["haproxy_s"] is not None and o["lookup_s"] is not None)
                  or probed_at - o["heard"] > 30]:
            outstanding.remove(o)
            c = o["change"]
            out.put({"action": c.action, "revision": c.revision, "cell": c.cell, "state": c.state, "at": o["at"],
                     "haproxy_s": o["haproxy_s"], "lookup_s": o["lookup_s"], "probes": o["probes"]})
    lookup.close()


class OverheadProbe:
    """GET of the same note through HAProxy and straight from its application, alternately."""

    def __init__(self, router_port: int, app_port: int, org: int, note: int, rate: float):
        self.router, self.app = KeepAlive(router_port), KeepAlive(app_port)
        self.path, self.headers = f"/orgs/{org}/notes/{note}", {"X-Organization-Id": str(org)}
        self.interval = 1.0 / rate
        self.samples: dict[str, list[float]] = {"haproxy": [], "direct": []}
        self.pairs: list[float] = []  # haproxy - direct, of the two reads of one round
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OverheadProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        order = ["haproxy", "direct"]
        while not self._stop.wait(self.interval):
            random.shuffle(order)  # neither path always goes first
            got = {}
            for name in order:
                conn = self.router if name == "haproxy" else self.app
                t0 = time.perf_counter()
                try:
                    status, _ = conn.get(self.path, self.headers)
                except (OSError, http.client.HTTPException):
                    status = 0
                if status == 200:
                    got[name] = time.perf_counter() - t0
                    self.samples[name].append(got[name])
                else:
                    self.errors += 1
            if len(got) == 2:
                self.pairs.append(got["haproxy"] - got["direct"])


def lookup_timing(lookup, orgs: list[int], n: int) -> dict:
    rng = random.Random(7)
    picks = [rng.choice(orgs) for _ in range(n)]
    times = []
    for org in picks:
        t0 = time.perf_counter_ns()
        lookup.cell_of(org)
        times.append((time.perf_counter_ns() - t0) / 1e9)
    return {"lookups": n, "p50_us": round(pct(times, 50) * 1e6, 2), "p99_us": round(pct(times, 99) * 1e6, 2),
            "max_us": round(max(times) * 1e6, 2)}


def classify_timing(env: dict, org: int, runs: int) -> dict:
    out = {}
    for name, args in (("json", ["topology", "classify", str(org), "--json"]),
                       ("table", ["topology", "classify", str(org)])):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            result = subprocess.run([str(BIN / "migrator"), *args], env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if result.returncode != 0:
                raise SystemExit(f"migrator topology classify failed: {result.stderr}")
        out[name] = {"runs": runs, "p50_ms": ms(pct(times, 50)), "p90_ms": ms(pct(times, 90)), "max_ms": ms(max(times))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--online-moves", type=int, default=20)
    p.add_argument("--frozen-moves", type=int, default=5)
    p.add_argument("--rate", type=float, default=240.0, help="client requests/s through HAProxy (before retries)")
    p.add_argument("--threads", type=int, default=16,
                   help="client threads (a thread waits out each Retry-After: enough of them keep the rate)")
    p.add_argument("--rows", type=int, default=2000, help="rows of the moving organization")
    p.add_argument("--bystanders", type=int, default=2, help="organizations per cell that do not move")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overhead-rate", type=float, default=40.0, help="overhead probe pairs per second")
    p.add_argument("--lookups", type=int, default=200_000)
    p.add_argument("--classify-runs", type=int, default=20)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    stop_on_signals()

    from tests.support.edge import Edge, haproxy_binary

    exe, reason = haproxy_binary()
    if exe is None:
        raise SystemExit(f"haproxy is needed ({reason}): apt-get install haproxy")

    from migrator.moves.operations import Operations
    from migrator.moves.store import MoveStore
    from migrator.sample.seed import seed_organizations
    from migrator.topology.client import topology_client
    from migrator.topology.lookup import RouteLookup
    from tests.support.traffic import Traffic

    plan = (["frozen"] * a.frozen_moves + ["online"] * a.online_moves)
    # Spread the frozen moves among the online ones.
    if a.frozen_moves and a.online_moves:
        step = len(plan) / a.frozen_moves
        plan = ["online"] * len(plan)
        for i in range(a.frozen_moves):
            plan[int(i * step)] = "frozen"
    result: dict = {"machine": machine(), "args": vars(a) | {"json": str(a.json) if a.json else None}}
    with bench_fleet(cells=3) as fleet:
        fleet.init()
        settings = fleet.settings()
        [moving] = [o.organization_id for o in seed_organizations(settings, "cell-1", orgs=1, rows=a.rows, blobs=4,
                                                                  skew=False, seed=1)]
        bystanders = {cell: [o.organization_id for o in seed_organizations(
            settings, cell, orgs=a.bystanders, rows=200, blobs=1, skew=False, seed=10 + i)]
            for i, cell in enumerate(CELLS)}
        reader = fleet.certs["clients"]["reader"]
        edge = Edge(fleet.config_path, fleet.workdir / "edge", CELLS,
                    sync_env={"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(reader["cert"]),
                              "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(reader["key"])})
        settings = fleet.settings()  # now with app_servers and the router section
        lookup = prober = overhead = traffic = None
        try:
            edge.start_apps()
            edge.start_haproxy(exe)
            edge.start_sync()
            edge.wait_sync_current()
            fleet.start_workers(a.workers)
            lookup = RouteLookup.from_settings(settings).start()
            assert lookup.wait_synced(30)
            prober = FlipProber(settings.control_dsn, settings.topology.notify_channel, edge.port,
                                fleet.config_path, {"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(reader["cert"]),
                                                    "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(reader["key"])},
                                moving).start()
            # The overhead probe reads a note of a bystander of cell-3, made straight in its application.
            probe_org = bystanders["cell-3"][0]
            conn = http.client.HTTPConnection("127.0.0.1", edge.app_ports["cell-3"], timeout=10)
            conn.request("POST", f"/orgs/{probe_org}/notes", body=json.dumps({"note": "overhead probe"}),
                         headers={"Content-Type": "application/json"})
            note = json.loads(conn.getresponse().read())["id"]
            overhead = OverheadProbe(edge.port, edge.app_ports["cell-3"], probe_org, note, a.overhead_rate).start()
            others = [o for orgs in bystanders.values() for o in orgs]
            traffic = Traffic("127.0.0.1", edge.port, [moving, *others], rate=a.rate, threads=a.threads,
                              weights={moving: float(len(others)), **{o: 1.0 for o in others}}).start()
            time.sleep(3)
            ops, store = Operations(settings), MoveStore(settings.control_dsn)
            topology = topology_client(settings)
            cell = "cell-1"
            moves = []
            for i, strategy in enumerate(plan):
                target = CELLS[(CELLS.index(cell) + 1) % len(CELLS)]
                t0 = time.monotonic()
                move = ops.request_move(moving, target, actor="benchmark", reason="router benchmark",
                                        strategy=strategy)
                [final] = wait_moves(settings, [move.id], timeout=900)
                if final.state != "completed":
                    raise SystemExit(f"move {final.id} ended {final.state}: {final.error}")
                flip_revision = max(h["id"] for h in topology.history(moving) if h["action"] == "flip")
                flip = prober.wait_for(flip_revision, "flip")
                unfreeze = prober.wait_for(flip_revision, "unfreeze")
                took = time.monotonic() - t0
                ops.cleanup(move.id, force=True, actor="benchmark")
                deadline = time.monotonic() + 300
                while store.get(move.id).state != "cleaned":
                    if time.monotonic() > deadline:
                        raise SystemExit(f"cleanup of move {move.id} did not finish")
                    time.sleep(0.1)
                moves.append({"strategy": strategy, "from": cell, "to": target, "move_s": round(took, 2),
                              "write_window_s": (final.report or {}).get("write_window_s"),
                              "flip_haproxy_ms": ms(flip["haproxy_s"]), "flip_lookup_ms": ms(flip["lookup_s"]),
                              "unfreeze_haproxy_ms": ms(unfreeze["haproxy_s"])})
                print(f"move {i + 1:2d}/{len(plan)} {strategy:6s} {cell} -> {target}: {took:5.1f} s, write window "
                      f"{moves[-1]['write_window_s']} s, flip at HAProxy after {moves[-1]['flip_haproxy_ms']} ms, "
                      f"in the lookup cache after {moves[-1]['flip_lookup_ms']} ms", file=sys.stderr)
                cell = target
            time.sleep(2)
            traffic.stop()
            overhead.stop()
            prober.stop()
            final_cells = {o: topology.classify(o).cell for o in [moving, *others]}
            totals = traffic.check(lambda o: settings.cell(final_cells[o]).dsn)
            duration = traffic.stopped_at - traffic.started_at
            outcomes = traffic.outcomes
            refusals: dict[str, int] = {}
            for o in outcomes:
                for r in o.refusals:
                    refusals[r] = refusals.get(r, 0) + 1
            result["client"] = {
                "duration_s": round(duration, 1), "requests": totals.requests, "http_requests": totals.attempts,
                "requests_per_s": round(totals.requests / duration, 1),
                "http_requests_per_s": round(totals.attempts / duration, 1),
                "writes_acked": totals.writes_acked, "reads_ok": totals.reads_ok,
                "retried_503": totals.retried_503, "refused_by": refusals,
                "writes_acked_but_missing": totals.lost_writes, "reads_failed": totals.reads_failed,
                "answers_not_2xx_or_503_retry_after": totals.bad_answers, "examples": totals.examples,
                "moving_org_requests": sum(1 for o in outcomes if o.org == moving),
            }
            # A change not seen within the prober's 30 s counts as 30 s (never silently left out).
            flips = [m["flip_haproxy_ms"] or 30_000.0 for m in moves]
            flips_cache = [m["flip_lookup_ms"] or 30_000.0 for m in moves]
            unfreezes = [m["unfreeze_haproxy_ms"] or 30_000.0 for m in moves]
            result["propagation"] = {
                "flips": len(moves), "not_seen_within_30s": sum(m["flip_haproxy_ms"] is None for m in moves),
                "flip_haproxy_p50_ms": pct(flips, 50), "flip_haproxy_p99_ms": pct(flips, 99),
                "flip_haproxy_max_ms": max(flips) if flips else None,
                "flip_lookup_p50_ms": pct(flips_cache, 50), "flip_lookup_p99_ms": pct(flips_cache, 99),
                "unfreeze_haproxy_p50_ms": pct(unfreezes, 50), "unfreeze_haproxy_p99_ms": pct(unfreezes, 99),
                "all_changes": prober.records,
            }
            h, d = overhead.samples["haproxy"], overhead.samples["direct"]
            result["overhead"] = {
                "pairs": min(len(h), len(d)), "errors": overhead.errors,
                "haproxy_p50_ms": ms(pct(h, 50)), "haproxy_p99_ms": ms(pct(h, 99)),
                "direct_p50_ms": ms(pct(d, 50)), "direct_p99_ms": ms(pct(d, 99)),
                "added_p50_ms": ms(pct(h, 50) - pct(d, 50)), "added_p99_ms": ms(pct(h, 99) - pct(d, 99)),
                # Per round (the two reads ~1 ms apart): the median of the differences.
                "paired_difference_p50_ms": ms(pct(overhead.pairs, 50)),
            }
            result["moves"] = moves
            result["lookup_cache"] = lookup_timing(lookup, [moving, *others], a.lookups)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
            env.update(MIGRATOR_CONFIG=str(fleet.config_path), MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT=str(reader["cert"]),
                       MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY=str(reader["key"]))
            result["classify_cli"] = classify_timing(env, moving, a.classify_runs)
            result["router_sync"] = {k: v for k, v in edge.metrics().items() if k.startswith("migrator_router_")}
        finally:
            for part in (traffic, overhead, prober):
                if part is not None:
                    part.stop()
            if lookup is not None:
                lookup.close()
            edge.stop()
    c, pr, ov = result["client"], result["propagation"], result["overhead"]
    result["targets"] = {
        "client_rate_at_least_200": c["http_requests_per_s"] >= 200,
        "writes_acked_but_missing_0": c["writes_acked_but_missing"] == 0,
        "reads_failed_0": c["reads_failed"] == 0,
        "other_answers_0": c["answers_not_2xx_or_503_retry_after"] == 0,
        "flip_p99_le_100ms": pr["flip_haproxy_p99_ms"] is not None and pr["flip_haproxy_p99_ms"] <= 100,
        "flip_p99_le_10ms_moonshot": pr["flip_haproxy_p99_ms"] is not None and pr["flip_haproxy_p99_ms"] <= 10,
        "lookup_p99_lt_1ms": result["lookup_cache"]["p99_us"] < 1000,
        "classify_lt_300ms": result["classify_cli"]["json"]["max_ms"] < 300,
    }
    print(f"\nrouter: {len(plan)} moves ({a.frozen_moves} frozen, {a.online_moves} online) of a {a.rows:,}-row "
          f"organization under {c['http_requests_per_s']} HTTP requests/s ({c['requests']} requests, "
          f"{c['retried_503']} retries after a 503)")
    rows = [
        ("writes acknowledged but missing on the final cell", c["writes_acked_but_missing"], "0"),
        ("reads failed", c["reads_failed"], "0"),
        ("answers other than 2xx and 503 with Retry-After", c["answers_not_2xx_or_503_retry_after"], "0"),
        ("flip committed -> HAProxy routes to the new cell, p50 / p99 ms",
         f"{pr['flip_haproxy_p50_ms']} / {pr['flip_haproxy_p99_ms']}", "p99 <= 100 (moonshot <= 10)"),
        ("flip committed -> lookup cache, p50 / p99 ms", f"{pr['flip_lookup_p50_ms']} / {pr['flip_lookup_p99_ms']}",
         ""),
        ("unfreeze committed -> HAProxy takes writes, p50 / p99 ms",
         f"{pr['unfreeze_haproxy_p50_ms']} / {pr['unfreeze_haproxy_p99_ms']}", ""),
        ("GET through HAProxy, p50 / p99 ms", f"{ov['haproxy_p50_ms']} / {ov['haproxy_p99_ms']}", ""),
        ("GET straight to the app, p50 / p99 ms", f"{ov['direct_p50_ms']} / {ov['direct_p99_ms']}", ""),
        ("router overhead, p50 / p99 ms (median of paired differences)",
         f"{ov['added_p50_ms']} / {ov['added_p99_ms']} ({ov['paired_difference_p50_ms']})", ""),
        ("route lookup from the cache, p50 / p99 us",
         f"{result['lookup_cache']['p50_us']} / {result['lookup_cache']['p99_us']}", "p99 < 1000"),
        ("migrator topology classify --json, p50 / max ms",
         f"{result['classify_cli']['json']['p50_ms']} / {result['classify_cli']['json']['max_ms']}", "< 300"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:{width}s}  {value!s:>18s}  {target}")
    print("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["targets"].items()))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
