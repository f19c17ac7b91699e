"""Prometheus metrics the workers record (docs/adr/0008-metrics.md).

Worker pool processes write them in prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set by ``tasks/app.py`` before this module is imported); the worker's main process serves the sum
on ``metrics.worker_port``. Gauges derived from the control database (moves by state, frozen
seconds, cell capacity) are served by ``migrator metrics serve`` instead, so that several worker
processes never double-count them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STEP_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

step_duration = Histogram("migrator_step_duration_seconds", "Time one execution of a move step (or unit) took",
                          ["step", "kind"], buckets=STEP_BUCKETS)
steps_finished = Counter("migrator_steps_total", "Step and unit executions by outcome", ["step", "outcome"])
rows_copied = Counter("migrator_rows_copied_total", "Rows copied into target cells", ["table"])
bytes_copied = Counter("migrator_bytes_copied_total", "Bytes of row data (binary COPY) copied into target cells")
blobs_copied = Counter("migrator_blobs_copied_total", "Blobs checked by copy_blobs, by outcome", ["outcome"])
blob_bytes_copied = Counter("migrator_blob_bytes_copied_total", "Bytes of blobs written to target stores")
blob_bytes_read = Counter("migrator_blob_bytes_read_total",
                          "Object bytes that passed through workers copying blobs (0 for server-side copies)")
write_window = Histogram("migrator_write_window_seconds",
                         "Write window of flipped moves: from the freeze until the target accepted writes",
                         buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
moves_finished = Counter("migrator_moves_finished_total", "Moves that reached an end state", ["state"])
verification_mismatches = Counter("migrator_verification_mismatches_total",
                                  "Key ranges whose checksums differed between source and target", ["table"])
verification_failures = Counter("migrator_verification_failures_total",
                                "Moves failed because a range still differed after a re-copy")
alerts_received = Counter("migrator_alerts_received_total", "Alertmanager alerts received by the webhook",
                          ["alertname", "status", "outcome"])
rebalancer_decisions = Counter("migrator_rebalancer_decisions_total", "Decisions the rebalancer recorded", ["kind"])
reconciler_reenqueues = Counter("migrator_reconciler_reenqueues_total", "Moves re-enqueued by the reconciler")
health_signal = Gauge("migrator_health_signal",
                      "Latest signal of a cell's health indicator as a worker read it (0 normal, 1 slow down, 2 stop)",
                      ["cell", "indicator"], multiprocess_mode="mostrecent")
throttled = Counter("migrator_throttled_total", "Units (or batches) held back by a health signal",
                    ["cell", "indicator", "signal"])
