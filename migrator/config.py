"""Configuration: one YAML file plus environment variables.

The file is ``$MIGRATOR_CONFIG`` (default ``./migrator.yaml``). Any value can be overridden by an
environment variable ``MIGRATOR_<KEY>``, nested keys joined by ``__`` (``MIGRATOR_CONTROL_DSN``,
``MIGRATOR_MOVES__DRAIN_TIMEOUT_S``). Inside the YAML, ``${VAR}`` is replaced by the environment
variable ``VAR`` so credentials need not be written in the file. A wrong or missing value gives one
:class:`~migrator.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from migrator.configfile import DEFAULT_CONFIG_PATH, config_path_from_env, read_config_file
from migrator.dsn import mask_dsn
from migrator.errors import ConfigError, UnknownCell
from migrator.sample import SAMPLE_DICTIONARY_PATH

__all__ = ["DEFAULT_CONFIG_PATH", "Settings", "clear_settings_cache", "config_path_from_env", "get_settings",
           "load_settings"]

_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})")


def _host_port(value: str) -> str:
    """HOST:PORT, or unix:/absolute/path (a unix socket)."""
    if (value or "").startswith("unix:/"):
        return value
    match = _HOST_PORT.fullmatch(value or "")
    if not match or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (or unix:/absolute/path)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Keys that would put a credential into the config file: refused with a message saying where they go.
_CREDENTIAL_KEYS = {"access_key", "access_key_id", "aws_access_key_id", "secret_key", "secret_access_key",
                    "aws_secret_access_key", "session_token", "aws_session_token", "password", "credentials"}


class BlobStoreConfig(_Strict):
    """Where a cell keeps its objects. ``local``: a directory; ``s3``: an S3-compatible bucket.

    S3 credentials never go in this file: boto3 finds them in the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), a shared profile (``profile``), or the instance or
    container role. See docs/deploy.md, "Object storage".
    """

    kind: Literal["local", "s3"] = "local"
    path: str | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None  # None: AWS S3 itself (region picks the endpoint)
    region: str | None = None
    # A named profile of ~/.aws/config (its credentials or role); None: boto3's default chain.
    profile: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    ca_bundle: str | None = None  # a CA file for a TLS endpoint with a private CA
    # Copy inside the object store (CopyObject / UploadPartCopy) when source and target share an endpoint
    # and profile: no object byte passes through the workers. False: always stream through the worker.
    server_side_copy: bool = True
    # Objects from this size on are uploaded in parts of multipart_chunk_mb, max_concurrency parts at a
    # time (boto3's transfer manager; at most max_concurrency parts in memory). S3's smallest part is 5 MiB.
    multipart_threshold_mb: int = Field(default=8, ge=5)
    multipart_chunk_mb: int = Field(default=8, ge=5)
    max_concurrency: int = Field(default=8, ge=1, le=64)
    # Tries of each S3 call or object copy on a transient error (5xx, throttling, connection refused or
    # reset, timeout), with exponential backoff; then the task is retried (moves.task_retries).
    retry_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = sorted(k for k in data if str(k).lower() in _CREDENTIAL_KEYS)
            if found:
                raise ValueError(
                    f"{', '.join(found)}: credentials are never read from the config file; set "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment, name a profile, or use an "
                    "instance role (docs/deploy.md)")
        return data

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> BlobStoreConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("kind s3 needs a bucket")
        return self


class CellConfig(_Strict):
    dsn: str
    blobs: BlobStoreConfig = Field(default_factory=BlobStoreConfig)
    state: Literal["active", "draining", "offline"] = "active"
    # adopt: the cell already runs the application; never apply the sample schema to it.
    adopt: bool = False
    # The cell's application servers (HOST:PORT or unix:/path): its backend behind the edge router
    # (migrator router config).
    app_servers: list[str] = Field(default_factory=list)
    # Streaming standbys of the cell's database (DSNs): their replay lag throttles moves (health:).
    # The primary's pg_stat_replication is read as well; these add standbys it cannot see (cascades).
    standbys: list[str] = Field(default_factory=list)

    @field_validator("app_servers")
    @classmethod
    def _app_servers(cls, servers: list[str]) -> list[str]:
        return [_host_port(s) for s in servers]

    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)


class TopologyTlsConfig(_Strict):
    """Mutual TLS of the Topology Service (docs/adr/0013-topology-mtls.md); paths are relative to the
    config file. ``migrator topology certs init DIR`` makes all of them."""

    # The CA that signs the server's and every client's certificate (both sides trust only it).
    ca: str
    # The server's certificate and key (`migrator topology serve`).
    server_cert: str | None = None
    server_key: str | None = None
    # This process's client certificate and key; the certificate's OU is its role (reader, mover, admin).
    client_cert: str | None = None
    client_key: str | None = None
    # The name clients expect in the server's certificate (default: the host of topology.address;
    # "localhost" for a unix: address).
    server_name: str | None = None


class TopologyConfig(_Strict):
    # Where workers and the CLI reach the Topology Service (gRPC). None: use it in-process.
    address: str | None = "127.0.0.1:50051"
    listen: str = "127.0.0.1:50051"
    # TLS with client certificates. Without it the server listens on loopback (or a unix socket)
    # only, and every local caller may do anything, unless `insecure: true`.
    tls: TopologyTlsConfig | None = None
    # Serve (and call) without TLS on a non-loopback address: anyone who reaches the port may change
    # any route. Only for a network where nothing else runs.
    insecure: bool = False
    # Size of the ID range each cell's sequences get.
    sequence_block: int = Field(default=1_000_000_000_000, ge=1)
    notify_channel: str = Field(default="topology_routes", min_length=1, max_length=63)
    # The route change stream (WatchRoutes): a heartbeat with the head revision this often while
    # nothing changes (followers call a stream silent for 3 heartbeats + 2 s dead and reconnect),
    # and at most this many streams at once (routers and applications' lookups; each holds a thread).
    watch_heartbeat_s: float = Field(default=1.0, ge=0.05, le=60)
    max_watchers: int = Field(default=64, ge=1, le=10_000)


class RouterConfig(_Strict):
    """The edge router: HAProxy in front of the cells' application servers, its maps kept in step with the
    Topology Service by ``migrator router sync`` (docs/adr/0018-edge-router.md). Paths are relative to
    the config file."""

    # HAProxy's frontend: where requests arrive (HOST:PORT, or unix:/path).
    listen: str = "127.0.0.1:8000"
    # How a request names its organization: a header, a path segment (/orgs/42/notes: segment 2 is 42),
    # or any HAProxy sample expression (e.g. req.cook(org), url_param(org)).
    org_from: Literal["header", "path", "sample"] = "header"
    org_header: str = Field(default="X-Organization-Id", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    org_path_segment: int = Field(default=2, ge=1, le=32)
    org_sample: str | None = Field(default=None, pattern=r"^[^\n\r]+$")
    # A request for an organization without a route: "404", or the name of the cell that takes it.
    unknown_org: str = "404"
    # Writes to a frozen organization (and any 503 HAProxy gives) carry Retry-After: this many seconds.
    retry_after_s: int = Field(default=1, ge=1, le=3600)
    # Where `migrator router config` writes HAProxy's configuration, and the folder of its two maps
    # (orgs.map: organization -> cell; frozen.map: organizations whose writes are refused).
    haproxy_config: str = "router/haproxy.cfg"
    map_dir: str = "router"
    # The HAProxy admin sockets `migrator router sync` keeps current: unix socket paths or HOST:PORT (a
    # fleet of routers). The first is the one `router config` declares (stats socket ... level admin).
    admin_sockets: list[str] = Field(default_factory=lambda: ["router/haproxy-admin.sock"], min_length=1)
    # `router sync`: its metrics endpoint (None: none), and how often it compares each HAProxy's maps
    # with the routes it follows and repairs any difference (e.g. after HAProxy reloaded).
    metrics_addr: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9720, ge=1, le=65535)
    verify_every_s: float = Field(default=5.0, gt=0)
    # HAProxy: health check of the application servers (None: none), an endpoint answering which cell
    # an organization is routed to (None: off), timeouts, connections, access log to stdout.
    health_check_path: str | None = Field(default="/healthz", pattern=r"^/[^\s]*$")
    route_probe_path: str | None = Field(default="/_migrator/route", pattern=r"^/[^\s]*$")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    client_timeout_s: float = Field(default=30.0, gt=0)
    server_timeout_s: float = Field(default=30.0, gt=0)
    maxconn: int = Field(default=4096, ge=1)
    access_log: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _host_port(value)

    @model_validator(mode="after")
    def _sample_given(self) -> RouterConfig:
        if self.org_from == "sample" and not self.org_sample:
            raise ValueError("org_from: sample needs org_sample (an HAProxy sample expression, e.g. req.cook(org))")
        return self


class MoveConfig(_Strict):
    # Strategy of a move whose request names none (docs/adr/0009-online-moves.md).
    default_strategy: Literal["online", "frozen"] = "online"
    # Rows per COPY batch (one target transaction, one checkpoint) and per parallel key range (one
    # unit task). Equal by default: a range is copied as one batch, so its split needs no sorting
    # scan, and a crash re-copies at most one range (~1-2 s of work). See docs/performance.md.
    batch_rows: int = Field(default=200_000, ge=1)
    chunk_rows: int = Field(default=200_000, ge=1)
    blob_batch: int = Field(default=200, ge=1)
    # Threads copying (and verifying) one blob unit's objects at once; a batch's checkpoint waits for all of it.
    blob_workers: int = Field(default=8, ge=1, le=64)
    # Retries of a step or unit task after a transient error (a cell database or object store that does
    # not answer), with backoff 1, 2, 4 … 60 s; then the move fails and can be resumed.
    task_retries: int = Field(default=8, ge=0)
    # How verify hashes a row (docs/adr/0010-verify-row-hash.md): "hash" sums PostgreSQL's 64-bit
    # hash of the row's values (hash_record_extended; text form for columns it cannot hash), "text"
    # the 64-bit md5 prefix of the row's text form (3x slower; for cells on PostgreSQL < 14 or of
    # different byte order). Both sides of a move always use the same one.
    checksum: Literal["hash", "text"] = "hash"
    drain_timeout_s: float = Field(default=60.0, gt=0)
    lease_ttl_s: float = Field(default=60.0, gt=0)
    # The reconciler re-enqueues a running move whose heartbeat is older than this.
    stale_after_s: float = Field(default=90.0, gt=0)
    reconcile_every_s: float = Field(default=30.0, gt=0)
    # Inside the write window (freeze … flip) a crash must cost seconds: a step or unit there holds a
    # short lease that a heartbeat thread renews, the reconciler looks at such moves this often, and
    # re-enqueues one whose heartbeat is older than window_stale_after_s (docs/adr/0012-the-write-window.md).
    window_lease_ttl_s: float = Field(default=3.0, gt=0)
    window_stale_after_s: float = Field(default=4.0, gt=0)
    window_reconcile_every_s: float = Field(default=1.0, gt=0)
    # After the flip, verify the retained source copy against the target in full (keys the target changed
    # since are left out); cleanup refuses a move whose verification after the flip found differences.
    verify_after_flip: bool = True
    retention_hours: float = Field(default=168.0, ge=0)
    # Estimates used by preflight until measured rates exist.
    est_rows_per_s: float = Field(default=100_000.0, gt=0)
    est_blob_bytes_per_s: float = Field(default=100_000_000.0, gt=0)
    # The estimate calibrates from what the last calibration_moves completed moves of the last
    # calibration_days days measured (migrator/moves/calibration.py); 0 moves: the rates above only.
    calibration_moves: int = Field(default=20, ge=0)
    calibration_days: float = Field(default=30.0, gt=0)
    # Copy with FK and user triggers disabled on the target session (needs superuser or
    # GRANT SET ON PARAMETER session_replication_role). See docs/adr/0004-copy-path.md.
    disable_target_triggers: bool = True

    @field_validator("disable_target_triggers")
    @classmethod
    def _triggers_off_required(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "false is not supported: copy units run in parallel in any foreign-key order, which needs "
                "session_replication_role = replica on the target (docs/adr/0004-copy-path.md)")
        return value


class CeleryConfig(_Strict):
    result_backend: str | None = None
    queue_prefix: str = ""
    visibility_timeout_s: int = Field(default=7200, ge=1)
    task_soft_time_limit_s: int = Field(default=3000, ge=1)
    task_time_limit_s: int = Field(default=3600, ge=1)


class ApiConfig(_Strict):
    """The operators' HTTP API (``migrator api serve``)."""

    # Bearer token every endpoint but /healthz requires (Alertmanager's http_config.authorization
    # sends it too). Keep it out of the file: token: ${MIGRATOR_API_TOKEN}. None: the API refuses to start.
    token: str | None = Field(default=None, min_length=16)
    # Extra tokens also accepted, for a rotation without downtime (docs/runbooks/api-token-leaked.md).
    previous_tokens: list[Annotated[str, Field(min_length=16)]] = Field(default_factory=list)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    # Largest request body accepted (bytes); a bigger one is refused with 413 before it is read.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)


class CellThresholds(_Strict):
    """Capacity marks of a cell: above a high-water mark it is hot; the rebalancer moves organizations
    out until it is at or below the low-water mark, and never fills a target above its high-water mark.
    Bytes are the organizations' bytes (rows and blobs) routed to the cell. None: no mark."""

    high_water_bytes: int | None = Field(default=None, ge=0)
    low_water_bytes: int | None = Field(default=None, ge=0)
    high_water_orgs: int | None = Field(default=None, ge=0)
    low_water_orgs: int | None = Field(default=None, ge=0)
    # Concurrent moves from or to this cell (None: rebalance.max_moves_per_cell).
    max_concurrent_moves: int | None = Field(default=None, ge=0)


class RebalanceConfig(_Strict):
    """The rebalancer (docs/adr/0006-rebalancing-policy.md)."""

    # Thresholds of every cell, and per-cell overrides (a key set for a cell replaces the default's).
    defaults: CellThresholds = Field(default_factory=CellThresholds)
    cells: dict[str, CellThresholds] = Field(default_factory=dict)
    # Guardrails: active moves (any origin) from or to one cell, and in the whole fleet.
    max_moves_per_cell: int = Field(default=1, ge=0)
    max_moves_total: int = Field(default=3, ge=0)
    # An organization whose last move ended less than this ago is not moved again.
    cooldown_hours: float = Field(default=24.0, ge=0)
    # Organizations whose move would freeze them longer than this are never picked (None: no limit).
    max_write_window_s: float | None = Field(default=None, gt=0)
    # auto: a plan starts at once (within the guardrails); manual: it waits for `migrator rebalance apply`.
    approval: Literal["auto", "manual"] = "auto"
    # Alert names (label alertname) that trigger the rebalancer for the alert's `cell` label.
    alertnames: list[str] = Field(default_factory=lambda: ["CellCapacityHigh"])
    # Celery beat: how often readings are refreshed, and how often pending plan items are started.
    readings_every_s: float = Field(default=300.0, gt=0)
    tick_every_s: float = Field(default=30.0, gt=0)
    # An alert re-measures the cells first when the cached readings are older than this.
    readings_max_age_s: float = Field(default=120.0, ge=0)
    # At most this many organizations in one plan.
    max_plan_moves: int = Field(default=20, ge=1)
    # At most one plan per cell from alerts and the tick in this many seconds: an alert storm for a
    # cell costs one plan, the rest are noted against it (operators' plans are not limited).
    plan_cooldown_s: float = Field(default=600.0, ge=0)

    def thresholds(self, cell: str) -> CellThresholds:
        override = self.cells.get(cell)
        if override is None:
            return self.defaults
        return self.defaults.model_copy(update=override.model_dump(exclude_unset=True))

    @model_validator(mode="after")
    def _low_below_high(self) -> RebalanceConfig:
        for where, t in [("defaults", self.defaults)] + [(f"cells.{c}", self.thresholds(c)) for c in self.cells]:
            for dim in ("bytes", "orgs"):
                low, high = getattr(t, f"low_water_{dim}"), getattr(t, f"high_water_{dim}")
                if low is not None and high is not None and low > high:
                    raise ValueError(f"{where}: low_water_{dim} ({low}) is above high_water_{dim} ({high})")
        return self


class HealthLimits(_Strict):
    """The limits of a cell's health indicators (docs/adr/0019-health-indicators.md). Past a ``*_slow``
    limit a move's units slow down (smaller batches, a pause between them); past a ``*_stop`` limit they
    pause and are re-enqueued until it clears. None: that limit is not checked."""

    # Replay lag of the cell's standbys (pg_stat_replication on the primary, and cells.X.standbys).
    replication_lag_slow_s: float | None = Field(default=5.0, ge=0)
    replication_lag_stop_s: float | None = Field(default=30.0, ge=0)
    # WAL segments waiting for the archiver (pg_ls_archive_statusdir: needs pg_monitor or superuser).
    wal_ready_slow: int | None = Field(default=32, ge=0)
    wal_ready_stop: int | None = Field(default=128, ge=0)
    # Autovacuum working on a table the unit reads or writes: "slow", "stop" or "normal". An
    # anti-wraparound vacuum always counts as "stop" unless this is "normal".
    autovacuum_on_table: Literal["normal", "slow", "stop"] = "slow"
    # Active backends as a fraction of max_connections, and backends waiting for a lock.
    active_backends_slow: float | None = Field(default=0.7, ge=0, le=1)
    active_backends_stop: float | None = Field(default=0.9, ge=0, le=1)
    lock_waits_slow: int | None = Field(default=5, ge=0)
    lock_waits_stop: int | None = Field(default=20, ge=0)
    # A canary query the application's latency depends on (None: no canary), run canary_samples times
    # per reading; the p99 of the last canary_window samples (per worker process) against the limits, in ms.
    canary_sql: str | None = None
    canary_samples: int = Field(default=5, ge=1, le=100)
    canary_window: int = Field(default=100, ge=1, le=10_000)
    canary_p99_slow_ms: float | None = Field(default=50.0, ge=0)
    canary_p99_stop_ms: float | None = Field(default=250.0, ge=0)
    # Commit latency: a transaction that writes one WAL record (pg_logical_emit_message) and waits for its
    # flush, commit_samples times per reading; the p99 of the last canary_window samples, in ms. What the
    # other organizations' writes wait for when the copy saturates the disk.
    commit_samples: int = Field(default=3, ge=1, le=100)
    commit_p99_slow_ms: float | None = Field(default=50.0, ge=0)
    commit_p99_stop_ms: float | None = Field(default=200.0, ge=0)


class HealthConfig(_Strict):
    """Moves throttle on their cells' health (docs/adr/0019-health-indicators.md). Units of copy_rows,
    copy_blobs, verify, catch_up and cleanup obey; nothing inside the write window is throttled."""

    enabled: bool = True
    defaults: HealthLimits = Field(default_factory=HealthLimits)
    # Per-cell overrides: a key set for a cell replaces the default's.
    cells: dict[str, HealthLimits] = Field(default_factory=dict)
    # A reading is reused this long (per worker process) before the cell is asked again.
    check_every_s: float = Field(default=2.0, ge=0)
    # A paused unit is re-enqueued after this long (and so on, while the signal says stop).
    pause_s: float = Field(default=5.0, gt=0)
    # On "slow down": batches shrink by this factor, and a unit rests slow_rest_fraction of each batch's
    # time after it.
    slow_batch_factor: float = Field(default=0.25, gt=0, le=1)
    slow_rest_fraction: float = Field(default=1.0, ge=0)
    # ... and a batch's COPY stream runs at most this fraction of the bytes/s the unit measured at full
    # speed (the bursts inside a batch are what other organizations' p99 feels).
    slow_rate_fraction: float = Field(default=0.5, gt=0, le=1)
    # Batches adapt toward this duration (rows per batch from the rate measured so far; between
    # moves.batch_rows * slow_batch_factor and moves.batch_rows). None: fixed batch_rows.
    target_batch_s: float | None = Field(default=None, gt=0)
    # Connecting to a cell or a standby for a reading.
    connect_timeout_s: float = Field(default=3.0, gt=0)

    def limits(self, cell: str) -> HealthLimits:
        override = self.cells.get(cell)
        if override is None:
            return self.defaults
        return self.defaults.model_copy(update=override.model_dump(exclude_unset=True))


class OnlineConfig(_Strict):
    """The online strategy's catch-up (docs/adr/0009-online-moves.md): freeze only when the captured
    delta left is at most ``max_delta_keys`` keys and its estimated apply time at most ``max_delta_s``."""

    max_delta_keys: int = Field(default=2000, ge=0)
    max_delta_s: float = Field(default=0.5, ge=0)
    # Apply rate assumed before the first round has measured one.
    assumed_keys_per_s: float = Field(default=5000.0, gt=0)
    # Pause between catch-up rounds once the delta is small (lets it accumulate).
    poll_s: float = Field(default=0.1, ge=0)
    # How often celery beat removes captures whose move ended (a crashed or deleted move).
    collect_every_s: float = Field(default=60.0, gt=0)


class ObservabilityConfig(_Strict):
    # Port on which each worker's main process serves its pool's metrics (None: no endpoint).
    # Several workers on one host: give each its own port (MIGRATOR_OBSERVABILITY__WORKER_METRICS_PORT).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Address of that endpoint (unauthenticated, so loopback unless Prometheus scrapes from elsewhere).
    worker_metrics_addr: str = "127.0.0.1"
    # Directory for prometheus-client's multiprocess files (default: a fresh one per worker).
    multiproc_dir: str | None = None
    log_format: Literal["text", "json"] = "text"
    # Flower's basic auth, "user:password[,user2:password2]" (FLOWER_BASIC_AUTH wins if set).
    flower_basic_auth: str | None = None


class Settings(BaseSettings):
    """Everything the migrator needs to know, from the YAML file and the environment."""

    model_config = SettingsConfigDict(
        env_prefix="MIGRATOR_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    control_dsn: str
    broker_url: str = "redis://127.0.0.1:6379/0"
    dictionary_path: str | None = None
    cells: dict[str, CellConfig] = Field(default_factory=dict)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    moves: MoveConfig = Field(default_factory=MoveConfig)
    celery: CeleryConfig = Field(default_factory=CeleryConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    rebalance: RebalanceConfig = Field(default_factory=RebalanceConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    # Where this settings object was read from (set by load_settings, not by the user).
    config_path: str | None = None

    @field_validator("cells")
    @classmethod
    def _cell_names(cls, cells: dict[str, CellConfig]) -> dict[str, CellConfig]:
        for name in cells:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", name):
                raise ValueError(f"cell name {name!r} must be 1-63 letters, digits, '-', '_' or '.'")
        return cells

    @model_validator(mode="after")
    def _router_default_cell(self) -> Settings:
        default = self.router.unknown_org
        if default != "404" and default not in self.cells:
            known = ", ".join(sorted(self.cells)) or "none"
            raise ValueError(f"router.unknown_org {default!r} is neither 404 nor a configured cell ({known})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    def cell(self, name: str) -> CellConfig:
        try:
            return self.cells[name]
        except KeyError:
            known = ", ".join(sorted(self.cells)) or "none"
            raise UnknownCell(
                f"unknown cell {name!r}", f"configured cells: {known}; add it under 'cells:' in the config"
            ) from None

    def dictionary_file(self) -> Path:
        if self.dictionary_path:
            path = Path(self.dictionary_path)
            if not path.is_absolute() and self.config_path:
                path = Path(self.config_path).parent / path
            return path

        return SAMPLE_DICTIONARY_PATH

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value)
        if not path.is_absolute() and self.config_path:
            path = Path(self.config_path).parent / path
        return path


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read the config file (``path``, else ``$MIGRATOR_CONFIG``, else ``./migrator.yaml``)."""
    cfg_path = Path(path) if path is not None else config_path_from_env()
    data: dict[str, Any] = {}
    if cfg_path.exists():
        data = read_config_file(cfg_path)
    elif not os.environ.get("MIGRATOR_CONTROL_DSN"):
        raise ConfigError(
            f"config file {cfg_path} not found",
            "set MIGRATOR_CONFIG to your config file, or create ./migrator.yaml (see README.md, Configuration)",
        )
    data["config_path"] = str(cfg_path.resolve())
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "missing":
                msg = "is required"
            elif err["type"] == "extra_forbidden":
                msg = "is not a known key"
            problems.append(f"{key} {msg}")
        raise ConfigError(
            f"invalid config {cfg_path}: " + "; ".join(mask_dsn(p) for p in problems),
            "see README.md, Configuration",
        ) from None


@lru_cache(maxsize=1)
def _cached(path: str) -> Settings:
    return load_settings(path)


def get_settings() -> Settings:
    """The settings of this process (read once per config path)."""
    return _cached(str(config_path_from_env().resolve()))


def clear_settings_cache() -> None:
    _cached.cache_clear()
