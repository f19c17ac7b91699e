"""A Celery app module for benchmark workers: the real ``tasks`` app, plus timing of each task.

``celery -A benchmarks._probe worker`` runs exactly the tasks of ``celery -A tasks worker``. In
each pool process it wraps, without changing what they do:

* the data work of a unit: ``copy_range`` (copy_rows) and ``range_checksum(s)`` (verify), as
  called from the step modules ``migrator.moves.steps.copy_rows`` and ``…steps.verify``;
* the checkpoints written to the control database in between (``MoveStore.checkpoint_unit``),

and appends one JSON line per task to ``$BENCH_PROBE_FILE``: task name, unit, wall-clock start and
end, and the seconds spent in data work (checkpoints excluded). ``benchmarks/move.py`` subtracts
the data work from the step's wall time to get the Celery + control-database overhead.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time

from celery.signals import task_postrun, task_prerun, worker_process_init

from tasks.app import app  # noqa: F401 - the worker's app

_state = threading.local()


def _acc(name: str, seconds: float) -> None:
    d = getattr(_state, "acc", None)
    if d is not None:
        d[name] = d.get(name, 0.0) + seconds


def _timed(fn, name: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _acc(name, time.perf_counter() - t0)

    wrapper.__bench_probe__ = True
    return wrapper


def install() -> None:
    from migrator.moves.steps import copy_rows, verify
    from migrator.moves.store import MoveStore

    for module in (copy_rows, verify):
        for attr, name in (("copy_range", "copy"), ("range_checksum", "checksum"), ("range_checksums", "checksum")):
            fn = getattr(module, attr, None)
            if fn is not None and not getattr(fn, "__bench_probe__", False):
                setattr(module, attr, _timed(fn, name))
    if not getattr(MoveStore.checkpoint_unit, "__bench_probe__", False):
        MoveStore.checkpoint_unit = _timed(MoveStore.checkpoint_unit, "checkpoint")


def _install_all() -> None:
    install()


@worker_process_init.connect
def _init(**_):
    _install_all()


_install_all()  # also in the main process (solo pool, or tasks run there)


@task_prerun.connect
def _prerun(task_id=None, task=None, kwargs=None, **_):
    _state.acc = {}
    _state.t0 = time.time()


@task_postrun.connect
def _postrun(task_id=None, task=None, kwargs=None, **_):
    path = os.environ.get("BENCH_PROBE_FILE")
    acc = getattr(_state, "acc", None) or {}
    t0 = getattr(_state, "t0", None)
    _state.acc = None
    if not path or t0 is None:
        return
    kwargs = kwargs or {}
    line = {"pid": os.getpid(), "task": task.name if task else None, "move_id": kwargs.get("move_id"),
            "unit": kwargs.get("unit"), "start": t0, "end": time.time(),
            "copy_s": acc.get("copy", 0.0), "checksum_s": acc.get("checksum", 0.0),
            "checkpoint_s": acc.get("checkpoint", 0.0)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
