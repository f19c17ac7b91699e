"""Worker-side observability: multiprocess metrics served by the worker's main process (on
``observability.worker_metrics_addr``, loopback by default), JSON logs, Flower's basic auth from the
config and its refusal to serve unauthenticated beyond loopback. ``prepare`` runs before any metric
is created.

Imports inside the functions are deliberate: prometheus-client must not be imported before
``PROMETHEUS_MULTIPROC_DIR`` is set (it picks its value class at import), Flower only under
``celery flower``, and the migrator's metrics and logging modules only once the environment they
read is in place."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_shutdown


def _is_worker() -> bool:
    return "worker" in sys.argv[1:]


def _is_flower() -> bool:
    return "flower" in sys.argv[1:]


def guard_flower() -> None:
    """Wrap Flower's start so it binds loopback by default and refuses to serve unauthenticated elsewhere
    (migrator/observability/flower.py). Runs when this app is loaded by ``celery ... flower``."""
    from flower.app import Flower

    if getattr(Flower.start_http_server, "_migrator_guarded", False):
        return
    original = Flower.start_http_server

    def start_http_server(self):
        from migrator.observability.flower import check_flower

        problem = check_flower(self.options)
        if problem:
            logging.getLogger("flower").error(problem)
            raise SystemExit(2)
        return original(self)

    start_http_server._migrator_guarded = True
    Flower.start_http_server = start_http_server


def prepare(settings) -> None:
    """Environment that must exist before prometheus-client and Flower read it."""
    obs = settings.observability
    if obs.flower_basic_auth:
        os.environ.setdefault("FLOWER_BASIC_AUTH", obs.flower_basic_auth)
    if _is_flower():
        guard_flower()
    if obs.worker_metrics_port and _is_worker():
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            path = obs.multiproc_dir or os.path.join(tempfile.gettempdir(),
                                                     f"cells-migrator-metrics-{obs.worker_metrics_port}")
            os.makedirs(path, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        # The celery command may have imported prometheus_client already (Flower's plugin does), when
        # the environment did not ask for multiprocess mode yet: choose the value class again.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()


def connect(settings) -> None:
    obs = settings.observability

    @worker_init.connect(weak=False)
    def _serve_metrics(**_):
        if not obs.worker_metrics_port or "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        for name in os.listdir(path):  # files of an earlier run of this worker would be summed in
            full = os.path.join(path, name)
            if os.path.isfile(full):
                os.unlink(full)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(obs.worker_metrics_port, addr=obs.worker_metrics_addr, registry=registry)

    @worker_process_shutdown.connect(weak=False)
    def _child_gone(pid=None, **_):
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid or os.getpid())

    @after_setup_logger.connect(weak=False)
    @after_setup_task_logger.connect(weak=False)
    def _json_logs(logger=None, **_):
        from migrator.dsn import install_log_masking

        if obs.log_format == "json" and logger is not None:
            from migrator.observability.logs import use_json_logs

            use_json_logs(logger)
        install_log_masking(logger)


def cleanup_dir() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.basename(path).startswith("cells-migrator-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
