"""The errors an operator can see. Each names the thing that is wrong and what to do about it."""

from __future__ import annotations


class MigratorError(Exception):
    """Base of every error the migrator reports to a person.

    ``code`` is stable (scripts and the API match on it); ``hint`` says what to do.
    """

    code = "migrator_error"
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, **extra):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Plain data a script may need besides the message (e.g. the id of a move that was recorded).
        self.extra = extra

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, **self.extra}


class ConfigError(MigratorError):
    code = "config_error"
    exit_code = 2


class UnknownOrganization(MigratorError):
    code = "unknown_organization"


class UnknownCell(MigratorError):
    code = "unknown_cell"


class SameCell(MigratorError):
    code = "same_cell"


class MoveConflict(MigratorError):
    """A second active move of the same organization."""

    code = "move_conflict"


class UnknownMove(MigratorError):
    code = "unknown_move"


class InvalidMoveState(MigratorError):
    code = "invalid_move_state"


class DictionaryError(MigratorError):
    """The data dictionary and a live schema disagree, or the dictionary itself is invalid."""

    code = "dictionary_error"


class SchemaMismatch(MigratorError):
    code = "schema_mismatch"


class KeyCollision(MigratorError):
    code = "key_collision"


class UniqueCollision(KeyCollision):
    """Values of the organization's rows under a unique constraint or index that other rows of the target
    already hold (another organization's ``path``, the same ``(project_id, iid)``)."""

    code = "unique_collision"


class BlobMissing(MigratorError):
    code = "blob_missing"


class BlobChecksumMismatch(MigratorError):
    code = "blob_checksum_mismatch"


class ChecksumMismatch(MigratorError):
    code = "checksum_mismatch"


class CaptureIncomplete(MigratorError):
    """The online strategy's change capture may have missed changes: the move must not flip."""

    code = "capture_incomplete"


class CellUnavailable(MigratorError):
    """A cell database (or its blob store) does not answer."""

    code = "cell_unavailable"


class BlobStoreUnavailable(CellUnavailable):
    """A cell's object store does not answer (after its retries). Transient like a cell database: the
    task is retried with backoff, then the move fails and can be resumed (docs/runbooks/object-store-down.md)."""

    code = "blob_store_unavailable"


class BlobStoreRefused(MigratorError):
    """A cell's object store answered with a refusal that retrying will not change (access denied, no such
    bucket, invalid request)."""

    code = "blob_store_refused"


class DrainTimeout(MigratorError):
    code = "drain_timeout"


class StaleToken(MigratorError):
    """A worker acting for a superseded attempt of a move (fencing)."""

    code = "stale_token"


class LeaseLost(MigratorError):
    """Another execution took over a unit or step this one worked on (its lease lapsed): this one stops,
    the other carries on. Not a failure of the move."""

    code = "lease_lost"


class StaleVersion(MigratorError):
    """A compare-and-set on a route saw another version than expected."""

    code = "stale_version"


class RouteFrozen(MigratorError):
    code = "route_frozen"


class PermissionDenied(MigratorError):
    """An authenticated caller whose role does not allow the call (Topology Service)."""

    code = "permission_denied"


class Unauthenticated(MigratorError):
    """A caller without valid credentials."""

    code = "unauthenticated"


class GuardrailExceeded(MigratorError):
    """A move would exceed a concurrency limit (rebalance.max_moves_per_cell / max_moves_total)."""

    code = "guardrail_exceeded"


class BrokerUnavailable(MigratorError):
    """The broker (Redis) did not take a message; what was recorded stays recorded."""

    code = "broker_unavailable"


class WatchEnded(CellUnavailable):
    """A route change stream ended (its server stopped, lost notifications, or the watcher fell behind):
    watch again; a new stream starts with a fresh snapshot."""

    code = "watch_ended"


class TooManyWatchers(MigratorError):
    """The Topology Service already streams routes to topology.max_watchers callers."""

    code = "too_many_watchers"
