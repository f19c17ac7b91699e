"""Config: lower bounds on sizes and intervals, one-line YAML errors; DSN masking (issue 14)."""

from __future__ import annotations

import pytest

from migrator.config import load_settings
from migrator.dsn import redact
from migrator.errors import ConfigError


def _load(tmp_path, text: str):
    path = tmp_path / "migrator.yaml"
    path.write_text(text)
    return load_settings(path)


@pytest.mark.parametrize("key, value", [
    ("moves.batch_rows", -5), ("moves.chunk_rows", 0), ("moves.blob_batch", 0), ("moves.drain_timeout_s", 0),
    ("moves.lease_ttl_s", -1), ("moves.stale_after_s", 0), ("moves.reconcile_every_s", 0),
    ("moves.retention_hours", -1), ("celery.visibility_timeout_s", 0), ("celery.task_time_limit_s", 0),
    ("topology.sequence_block", 0), ("api.max_body_bytes", 10), ("rebalance.plan_cooldown_s", -1),
    ("rebalance.tick_every_s", 0), ("online.collect_every_s", 0), ("observability.worker_metrics_port", 0),
])
def test_sizes_and_intervals_have_lower_bounds(tmp_path, key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, f"control_dsn: postgresql://u:secret@h/db\n{section}:\n  {name}: {value}\n")
    assert exc.value.message.count("\n") == 0
    assert key in exc.value.message and "greater than" in exc.value.message
    assert "secret" not in exc.value.message


@pytest.mark.parametrize("text, where", [
    ("control_dsn: x\nmoves:\n  batch_rows: [1\n", "line 4, column 1"),
    ("control_dsn: x\n\tmoves: 1\n", "line 2, column 1"),
    ("control_dsn: x\nmoves: {a: 1\n", "line 3, column 1"),
    ("control_dsn: 'x\n", "line 2, column 1"),
])
def test_invalid_yaml_is_one_line_with_line_and_column(tmp_path, text, where):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    message = str(exc.value)
    assert "\n" not in message and where in message and "is not valid YAML" in message


@pytest.mark.parametrize("text, shown", [
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unescaped @ in the password
    ("postgresql://u:pa/ss:w@rd@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:pw@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
    ("redis://:secret@r:6379/0 and postgresql://a:b@c/d", "redis://:***@r:6379/0 and postgresql://a:***@c/d"),
    ("postgresql://h:5432/db", "postgresql://h:5432/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("host=h password=sec dbname=d", "host=h password=*** dbname=d"),
    ("postgresql://u:x@h/db?password=zz", "postgresql://u:***@h/db?password=***"),
])
def test_redact_masks_up_to_the_last_at_of_the_authority(text, shown):
    assert redact(text) == shown
