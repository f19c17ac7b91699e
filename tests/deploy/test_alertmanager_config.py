"""Alertmanager routing: `amtool check-config`, where each shipped alert goes, and the webhook's shape."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from migrator.config import RebalanceConfig
from tests.deploy.conftest import DEPLOY, ROOT
from tests.deploy.test_promtool import alert_rules

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
REBALANCER = "migrator-rebalancer"
HUMANS = "migrator-oncall"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _receiver(name: str) -> dict:
    [r] = [r for r in _config()["receivers"] if r["name"] == name]
    return r


def test_amtool_check_config(amtool):
    result = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_routing(amtool, rule):
    labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}", "cell=cell-1"]
    result = subprocess.run([amtool, "config", "routes", "test", f"--config.file={CONFIG}", *labels],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = result.stdout.strip().split(",")
    if rule["alert"] in RebalanceConfig().alertnames:
        assert receivers == [REBALANCER, HUMANS]   # the rebalancer acts; the humans get a slow copy
    else:
        assert receivers == [HUMANS]


def test_capacity_alert_goes_to_the_api_webhook_with_the_bearer_token():
    [hook] = _receiver(REBALANCER)["webhook_configs"]
    url = urlsplit(hook["url"])
    assert url.path == "/v1/alerts"
    assert hook["send_resolved"] is True
    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert bool(auth.get("credentials")) != bool(auth.get("credentials_file"))

    # The URL and the token file are the compose file's: the api service and port, the mounted secret.
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    api = compose["services"][url.hostname]
    assert api["command"][:2] == ["api", "serve"]
    assert str(url.port) == api["command"][api["command"].index("--port") + 1]
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in compose["services"]["alertmanager"]["secrets"]
    assert secret in compose["secrets"]


def test_the_rebalancer_route_matches_only_the_capacity_alerts():
    route = _config()["route"]
    assert route["receiver"] == HUMANS
    to_rebalancer = [r for r in route["routes"] if r["receiver"] == REBALANCER]
    assert len(to_rebalancer) == 1
    assert to_rebalancer[0]["matchers"] == [f'alertname = "{n}"' for n in RebalanceConfig().alertnames]
    assert "cell" in to_rebalancer[0]["group_by"]


def test_inhibit_rules_name_shipped_alerts():
    names = {r["alert"] for r in alert_rules()}
    for rule in _config()["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            value = matcher.split("=", 1)[1].strip().lstrip("~").strip().strip('"')
            assert set(value.split("|")) <= names, matcher
