"""Benchmark a move's copy_blobs against raw boto3 on the same objects, on one S3-compatible server.

    .venv/bin/python benchmarks/blobs.py [--small 1000] [--small-kb 1-64] [--large 8] [--large-mb 200]
                                         [--parallelism 8] [--json out.json]

The server is moto's standalone server (``moto_server``, a process on a loopback port, tests/support/s3.py).
Cells 1-3 keep their blobs in three buckets of it. Two organizations are seeded into cell-1: one with
``--small`` objects of ``--small-kb`` KB, one with ``--large`` objects of ``--large-mb`` MB. Then:

1. **streamed** (the bytes pass through the worker: cell-2 has ``server_side_copy: false``):
   raw boto3 copies each organization's objects from cell-1's bucket to a scratch bucket, before and after
   the move (their mean is the yardstick: the machine's load drifts) (small: a GET and
   the transfer manager's upload, ``--parallelism`` threads; large: one object at a time, GET streamed into
   ``upload_fileobj`` with the transfer manager's ``--parallelism`` parts at a time), then a move of each
   organization to cell-2 (one Celery worker, ``--concurrency 1``: one unit at a time, each with
   ``moves.blob_workers = --parallelism`` threads, the same transfer settings); the worker's memory is
   sampled while it moves the large objects;
2. **server-side** (cell-2 and cell-3 behind one endpoint): a counting TCP proxy sits in front of the
   server for both; raw boto3 ``TransferManager.copy`` of the objects from cell-2's bucket, then a move
   of each organization to cell-3; the proxy counts the bytes the server sent to the worker (and to raw).

copy_blobs time is the move's copy_blobs step (started to finished, from its events: units, checkpoints,
fan-in included). Prints a table, writes JSON (``--json``); no figure is asserted. Targets: copy_blobs
>= 0.8x raw for both sizes, worker peak RSS < 300 MB while moving the large objects, server-side copy
moving no object bytes through the worker. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path and benchmarks/concurrent.py would hide
# the standard library's ``concurrent`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from benchmarks._fleet import BenchFleet, MemorySampler, bench_fleet, machine, stop_on_signals, wait_moves  # noqa: E402
from migrator.fleet.s3_server import MotoServer, TcpProxy, use_test_credentials  # noqa: E402

MB = 1024 * 1024
TARGETS = {"ratio": 0.8, "rss_mib": 300.0}


def _client(endpoint: str, parallelism: int):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(max_pool_connections=2 * parallelism + 4))


def _transfer(client, parallelism: int):
    """boto3's transfer manager with the settings the move uses (8 MB threshold and parts)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB, max_concurrency=parallelism,
                            preferred_transfer_client="classic")
    return config, create_transfer_manager(client, config)


def _empty(client, bucket: str) -> None:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def _raw(endpoint: str, objects: list[tuple[str, int]], parallelism: int, large: bool, copy) -> float:
    """``copy(client, tm, key)`` for every object: one at a time (large; the transfer manager runs the parts
    in parallel) or in ``parallelism`` threads (small); seconds."""
    client = _client(endpoint, parallelism)
    _, tm = _transfer(client, parallelism)
    t0 = time.perf_counter()
    if large:
        for key, _ in objects:
            copy(client, tm, key)
    else:
        with ThreadPoolExecutor(parallelism) as pool:
            list(pool.map(lambda k: copy(client, tm, k), [k for k, _ in objects]))
    elapsed = time.perf_counter() - t0
    tm.shutdown()
    return elapsed


def raw_streamed(endpoint: str, src: str, dst: str, objects: list[tuple[str, int]], parallelism: int,
                 large: bool) -> float:
    """GET from ``src`` streamed into the transfer manager's upload to ``dst``; seconds."""
    def copy(client, tm, key):
        tm.upload(client.get_object(Bucket=src, Key=key)["Body"], dst, key).result()

    elapsed = _raw(endpoint, objects, parallelism, large, copy)
    _empty(_client(endpoint, parallelism), dst)
    return elapsed


def raw_server_side(endpoint: str, src: str, dst: str, objects: list[tuple[str, int]], parallelism: int,
                    large: bool) -> float:
    """The transfer manager's managed copy (CopyObject, or UploadPartCopy parts above its threshold)."""
    def copy(client, tm, key):
        tm.copy({"Bucket": src, "Key": key}, dst, key).result()

    elapsed = _raw(endpoint, objects, parallelism, large, copy)
    _empty(_client(endpoint, parallelism), dst)
    return elapsed


def move_blobs(fleet: BenchFleet, org: int, target: str, *, sample: bool, timeout: float) -> dict:
    """Move ``org`` to ``target`` with one worker; the copy_blobs step's figures."""
    from benchmarks.move import step_times
    from migrator.moves.operations import Operations
    from migrator.moves.store import MoveStore

    settings = fleet.settings()
    [worker] = fleet.start_workers(1, concurrency=1)
    try:
        with MemorySampler([worker.pid]) as mem:
            move = Operations(settings).request_move(org, target, actor="benchmark", reason="benchmarks/blobs.py",
                                                     strategy="frozen")
            (move,) = wait_moves(settings, [move.id], timeout=timeout)
    finally:
        fleet.stop_workers()
    if move.state != "completed":
        raise RuntimeError(f"move {move.id} ended {move.state}: {move.error}")
    store = MoveStore(settings.control_dsn)
    units: dict = {}
    for u in store.units(move.id, "copy_blobs"):
        for k, v in (u.result or {}).items():
            units[k] = units.get(k, 0) + v
    times = step_times(store.events(move.id), move)
    out = {"copy_blobs_s": times["steps"]["copy_blobs"], "verify_s": times["steps"].get("verify"),
           "verified": bool((move.report or {}).get("verification", {}).get("ok")), **units}
    if sample:
        out["memory"] = mem.result()
    return out


def rates(count: int, nbytes: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "objects_per_s": round(count / seconds, 1),
            "mb_per_s": round(nbytes / MB / seconds, 1)}


def run(args) -> dict:
    from migrator.sample.seed import seed_organizations

    use_test_credentials()
    lo_kb, hi_kb = (int(x) for x in args.small_kb.split("-"))
    result: dict = {"machine": machine(), "parallelism": args.parallelism, "small": {}, "large": {}}
    with bench_fleet(cells=3, keep=args.keep) as fleet, MotoServer(fleet.workdir / "moto") as server:
        proxy = TcpProxy(server.port).start()
        buckets = {"cell-1": "bench-cell-1", "cell-2": "bench-cell-2", "cell-3": "bench-cell-3", "raw": "bench-raw"}
        server.create_buckets(*buckets.values())

        def s3(cell: str, endpoint: str, server_side: bool) -> dict:
            return {"kind": "s3", "bucket": buckets[cell], "endpoint_url": endpoint, "region": "us-east-1",
                    "server_side_copy": server_side}

        fleet.config["cells"]["cell-1"]["blobs"] = s3("cell-1", server.endpoint_url, True)
        fleet.config["cells"]["cell-2"]["blobs"] = s3("cell-2", server.endpoint_url, False)
        fleet.config["cells"]["cell-3"]["blobs"] = s3("cell-3", proxy.endpoint_url, True)
        fleet.config["moves"].update(blob_workers=args.parallelism, blob_batch=200)
        fleet.write_config()
        fleet.init()
        settings = fleet.settings()
        t0 = time.perf_counter()
        [small] = seed_organizations(settings, "cell-1", orgs=1, rows=max(2 * args.small + 100, 200),
                                     blobs=args.small, skew=False, seed=1, blob_sizes=(lo_kb * 1024, hi_kb * 1024))
        [large] = seed_organizations(settings, "cell-1", orgs=1, rows=200, blobs=args.large, skew=False, seed=2,
                                     blob_sizes=(args.large_mb * MB, args.large_mb * MB))
        result["seed_s"] = round(time.perf_counter() - t0, 1)
        orgs = {"small": small, "large": large}
        from tests.integration.test_s3_moves import blob_refs

        objects = {kind: [(r.key, r.size) for r in blob_refs(settings, "cell-1", o.organization_id)]
                   for kind, o in orgs.items()}
        for kind, objs in objects.items():
            result[kind].update(objects=len(objs), bytes=sum(s for _, s in objs))

        # 1. streamed: cell-1 -> cell-2, the bytes through the worker
        for kind, org in orgs.items():
            objs, nbytes = objects[kind], result[kind]["bytes"]

            raw = (server.endpoint_url, buckets["cell-1"], buckets["raw"], objs, args.parallelism)
            before = raw_streamed(*raw, large=kind == "large")
            moved = move_blobs(fleet, org.organization_id, "cell-2", sample=kind == "large", timeout=args.timeout)
            after = raw_streamed(*raw, large=kind == "large")
            raw_s = (before + after) / 2
            result[kind]["streamed"] = {"raw": {**rates(len(objs), nbytes, raw_s), "before_after_s": [
                                                round(before, 3), round(after, 3)]},
                                        "move": {**moved, **rates(len(objs), nbytes, moved["copy_blobs_s"])},
                                        "ratio": round(raw_s / moved["copy_blobs_s"], 2)}

        # 2. server-side: cell-2 -> cell-3, both behind the counting proxy
        fleet.config["cells"]["cell-2"]["blobs"] = s3("cell-2", proxy.endpoint_url, True)
        fleet.write_config()
        for kind, org in orgs.items():
            objs, nbytes = objects[kind], result[kind]["bytes"]
            proxy.reset_counts()
            raw = (proxy.endpoint_url, buckets["cell-2"], buckets["raw"], objs, args.parallelism)
            before = raw_server_side(*raw, large=kind == "large")
            raw_bytes = proxy.to_client
            proxy.reset_counts()
            moved = move_blobs(fleet, org.organization_id, "cell-3", sample=kind == "large", timeout=args.timeout)
            moved_bytes = proxy.to_client
            after = raw_server_side(*raw, large=kind == "large")
            raw_s = (before + after) / 2
            result[kind]["server_side"] = {
                "raw": {**rates(len(objs), nbytes, raw_s), "before_after_s": [round(before, 3), round(after, 3)],
                        "bytes_from_server": raw_bytes},
                "move": {**moved, **rates(len(objs), nbytes, moved["copy_blobs_s"]),
                         "bytes_from_server": moved_bytes},
                "ratio": round(raw_s / moved["copy_blobs_s"], 2)}
        proxy.stop()
    return result


def table(result: dict) -> str:
    lines = [f"blobs: parallelism {result['parallelism']}, one worker (--concurrency 1), moto_server on loopback",
             f"{'':34}{'small':>14}{'large':>14}"]

    def row(label, fn):
        cells = []
        for kind in ("small", "large"):
            try:
                cells.append(str(fn(result[kind])))
            except KeyError:
                cells.append("-")
        lines.append(f"{label:34}" + "".join(f"{c:>14}" for c in cells))

    row("objects", lambda r: r["objects"])
    row("MB", lambda r: round(r["bytes"] / MB, 1))
    for mode in ("streamed", "server_side"):
        row(f"{mode}: raw boto3 objects/s", lambda r, m=mode: r[m]["raw"]["objects_per_s"])
        row(f"{mode}: raw boto3 MB/s", lambda r, m=mode: r[m]["raw"]["mb_per_s"])
        row(f"{mode}: copy_blobs objects/s", lambda r, m=mode: r[m]["move"]["objects_per_s"])
        row(f"{mode}: copy_blobs MB/s", lambda r, m=mode: r[m]["move"]["mb_per_s"])
        row(f"{mode}: copy_blobs / raw (>= {TARGETS['ratio']})", lambda r, m=mode: r[m]["ratio"])
        row(f"{mode}: bytes read by worker", lambda r, m=mode: r[m]["move"]["bytes_read"])
    row("server_side: bytes server->worker", lambda r: r["server_side"]["move"]["bytes_from_server"])
    row("server_side: bytes server->raw", lambda r: r["server_side"]["raw"]["bytes_from_server"])
    row(f"worker peak RSS MiB (< {TARGETS['rss_mib']:.0f})", lambda r: r["streamed"]["move"]["memory"]
        ["peak_process_rss_mib"])
    row("worker tree peak RSS MiB", lambda r: r["streamed"]["move"]["memory"]["peak_worker_tree_rss_mib"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="small objects (default 1000)")
    parser.add_argument("--small-kb", default="1-64", help="their size range in KB (default 1-64)")
    parser.add_argument("--large", type=int, default=8, help="large objects (default 8)")
    parser.add_argument("--large-mb", type=int, default=200, help="their size in MB (default 200)")
    parser.add_argument("--parallelism", type=int, default=8, help="threads / parts in flight (default 8)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    stop_on_signals()
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
