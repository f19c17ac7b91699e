"""Prometheus config and alert rules: `promtool check`, `promtool test rules`, and what every alert must carry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT

PROM = DEPLOY / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
RUNBOOK_BASE = "https://cells-migrator.invalid/"
SEVERITIES = {"critical", "warning"}
SHIPPED = {"CellCapacityHigh", "MoveStuckInStep", "WriteWindowTooLong", "MoveVerificationFailed", "NoLiveWorkers",
           "ReconcilerReenqueuesClimbing", "ControlDatabaseDown", "MigratorTargetDown", "CertificateExpiresSoon",
           "RouterSyncLagging", "MoveThrottledLong"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=ROOT)


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def test_promtool_check_rules(promtool):
    result = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_check_config(promtool):
    result = _run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool):
    result = _run(promtool, "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_the_shipped_alerts():
    assert {r["alert"] for r in alert_rules()} == SHIPPED


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_annotations_and_a_runbook(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    notes = rule["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    url = notes["runbook_url"]
    assert url.startswith(RUNBOOK_BASE), url
    runbook = ROOT / url[len(RUNBOOK_BASE):]
    assert runbook.parent == ROOT / "docs" / "runbooks" and runbook.name.startswith("alert-"), url
    assert runbook.is_file(), f"{rule['alert']}: runbook {runbook} is missing"
    text = runbook.read_text()
    assert rule["alert"] in text
    for section in ("## What it means", "## Check", "## What to do", "## Verify it cleared"):
        assert section in text, f"{runbook.name} has no '{section}' section"


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules/migrator.rules.yml"], path.name
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"


def _metric_names(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(migrator_[a-z0-9_]+)\b", expr)}


def test_rules_use_metrics_the_code_exports():
    """A renamed metric must not leave an alert that can never fire."""
    sources = "\n".join(p.read_text() for folder in ("observability", "router")
                        for p in (ROOT / "migrator" / folder).glob("*.py"))
    from migrator.observability.exporter import CAPACITY_COLUMNS

    dynamic = {f"migrator_cell_{c}" for c in CAPACITY_COLUMNS}
    dynamic |= {f"migrator_cell_{m}" for m in ("high_water_bytes", "low_water_bytes", "high_water_orgs",
                                                "low_water_orgs") if f'"{m}"' in sources}
    for rule in alert_rules():
        for name in _metric_names(rule["expr"]):
            assert f'"{name}"' in sources or name in dynamic, f"{rule['alert']} uses {name}, which nothing exports"


def test_prometheus_scrapes_what_the_rules_need():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"migrator-exporter", "migrator-worker"} <= set(jobs)
    queues = {sc["labels"]["queue"] for sc in jobs["migrator-worker"]["static_configs"]}
    assert queues == {"control", "rows", "blobs"}
    assert cfg["rule_files"] == ["rules/*.yml"]
    assert all(Path(p).parent == PROM / "rules" for p in RULE_FILES)
    [am] = cfg["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
