"""Config: lower bounds on sizes and intervals, one-line YAML errors (also from `celery -A tasks`); DSN masking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("command", [["worker"], ["flower"]])
def test_celery_without_a_config_says_so_in_two_lines(tmp_path, command):
    """`celery -A tasks …` with no config file (or a broken one): the migrator's error and hint, no traceback."""
    celery = Path(sys.executable).with_name("celery")
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_CONFIG"}
    missing = subprocess.run([str(celery), "-A", "tasks", *command], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.splitlines()[0].startswith("error: config file ") and "not found" in missing.stderr
    assert missing.stderr.splitlines()[1].startswith("hint: set MIGRATOR_CONFIG")
    assert len(missing.stderr.splitlines()) == 2 and "Traceback" not in missing.stderr

    (tmp_path / "migrator.yaml").write_text("control_dsn: postgresql://u:secret@h/db\nmoves: {a: 1\n")
    broken = subprocess.run([str(celery), "-A", "tasks", *command], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2 and "not valid YAML: line 3, column 1" in broken.stderr, broken.stderr
    assert len(broken.stderr.splitlines()) == 2 and "secret" not in broken.stderr
