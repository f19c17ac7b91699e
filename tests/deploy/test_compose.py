"""deploy/compose.yaml and deploy/Dockerfile, checked for structure (no container engine runs here).

When a `docker` with the compose plugin is on PATH, `docker compose config` validates the file too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT

COMPOSE = DEPLOY / "compose.yaml"
EXPECTED = {"postgres", "redis", "topology", "api", "worker-control", "worker-rows", "worker-blobs", "beat", "flower",
            "exporter", "prometheus", "alertmanager", "app-cell-1", "app-cell-2", "app-cell-3", "router-config",
            "router", "router-sync"}
CONFIG_IN_CONTAINER = "/etc/cells-migrator/migrator.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict:
    return _compose()["services"]


def _migrator_services() -> dict:
    """The long-running processes of the image (not the one-off `certs` maker)."""
    return {n: s for n, s in _services().items() if s.get("image") == "cells-migrator:local" and n != "certs"}


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _argv(service: dict) -> list[str]:
    entry = service.get("entrypoint") or ["migrator"]
    return [*entry, *(service.get("command") or [])]


def _depends(service: dict) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, dict | list) else []


def test_services_present_with_an_image_or_a_build():
    services = _services()
    assert EXPECTED <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            build = svc["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).is_file(), name
        if "image" in svc and "build" not in svc:
            assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", svc["image"]), f"{name}: pin an image tag"


def test_depends_on_refers_to_existing_services_without_cycles():
    services = _services()
    for name, svc in services.items():
        for dep in _depends(svc):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
        if isinstance(svc.get("depends_on"), dict):
            for dep, cond in svc["depends_on"].items():
                assert cond["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no check"
    seen, stack = set(), set()

    def visit(n):
        assert n not in stack, f"dependency cycle through {n}"
        if n in seen:
            return
        stack.add(n)
        for d in _depends(services[n]):
            visit(d)
        stack.discard(n)
        seen.add(n)

    for n in services:
        visit(n)


def test_published_ports_unique_and_on_loopback():
    host_ports = []
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: publish {port} on 127.0.0.1 only"
            host_ports.append(parts[1])
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_only_authenticated_listeners_are_published():
    """Never a port without authentication (issue 14): the API needs its token, Flower its basic auth."""
    services = _services()
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"api", "flower"}
    assert "MIGRATOR_API__TOKEN" in _env(services["api"])
    assert "FLOWER_BASIC_AUTH" in _env(services["flower"])


def test_the_topology_service_runs_with_mutual_tls_and_each_process_gets_only_its_certificate(monkeypatch):
    services = _services()
    settings = _settings(monkeypatch)
    tls = settings.topology.tls
    assert tls is not None and not settings.topology.insecure
    certs_dir = str(Path(tls.ca).parent)
    mounts = {}
    for name, svc in _migrator_services().items():
        assert svc["depends_on"]["certs"] == {"condition": "service_completed_successfully"}, name
        mounted = [v.split(":")[0] for v in svc.get("volumes", []) if v.split(":")[1] == certs_dir]
        mounts[name] = mounted[0] if mounted else None
        for volume in svc.get("volumes", []):
            assert not volume.startswith("ca:"), f"{name} must not see the CA's key"
    assert mounts["topology"] == "certs-server"
    assert {mounts[n] for n in ("api", "worker-control", "worker-rows", "worker-blobs")} == {"certs-mover"}
    assert mounts["migrator"] == "certs-admin" and mounts["exporter"] == "certs-public"
    assert mounts["router-sync"] == "certs-reader"  # the router only reads routes
    assert not any(mounts[n] for n in ("app-cell-1", "app-cell-2", "app-cell-3", "router-config"))
    script = services["certs"]["command"][0]
    assert "migrator topology certs init" in script and "--san topology" in script
    assert all("key" not in step for step in script.split(";") if "/public/" in step), "certs-public holds no key"


def test_migrator_processes_and_their_commands():
    services = _migrator_services()
    assert {"topology", "api", "worker-control", "worker-rows", "worker-blobs", "beat", "flower", "exporter"} <= \
        set(services)
    for name, svc in services.items():
        env = _env(svc)
        assert env["MIGRATOR_CONFIG"] == CONFIG_IN_CONTAINER, name
        assert f"./compose/migrator.yaml:{CONFIG_IN_CONTAINER}:ro" in svc["volumes"], name
        for value in env.values():
            assert isinstance(value, str), f"{name}: environment values must be strings ({value!r})"
        argv = _argv(svc)
        assert argv[0] in ("migrator", "celery"), name
        if argv[0] == "celery":
            assert argv[1:3] == ["-A", "tasks"], name
    assert _argv(services["topology"])[1:3] == ["topology", "serve"]
    assert _argv(services["api"])[1:3] == ["api", "serve"]
    assert "MIGRATOR_API__TOKEN" in _env(services["api"])
    assert _argv(services["exporter"])[1:3] == ["metrics", "serve"]
    assert _argv(services["beat"])[3] == "beat" and "-s" in _argv(services["beat"])
    assert _argv(services["flower"])[3] == "flower" and "FLOWER_BASIC_AUTH" in _env(services["flower"])
    assert sum(1 for s in services.values() if "beat" in _argv(s)[3:4]) == 1, "exactly one beat"
    assert _argv(services["router-sync"])[1:3] == ["router", "sync"]
    assert _argv(services["router-config"])[1:3] == ["router", "config"]
    assert {tuple(_argv(services[f"app-cell-{i}"])[1:5]) for i in (1, 2, 3)} == {
        ("sample-app", "serve", "--cell", f"cell-{i}") for i in (1, 2, 3)}


def test_the_router_follows_the_topology_service_inside_the_compose_network(monkeypatch):
    """HAProxy reads what router-config wrote in the shared volume; router-sync reaches its admin socket by name;
    every cell's application is a service."""
    services, settings = _services(), _settings(monkeypatch)
    router = services["router"]
    assert router["depends_on"]["router-config"] == {"condition": "service_completed_successfully"}
    assert router["command"][-1] == settings.router.haproxy_config
    for name in ("router", "router-config", "router-sync"):
        assert any(v.split(":")[:2] == ["router", settings.router.map_dir] for v in services[name]["volumes"]), name
    [admin] = settings.router.admin_sockets
    assert admin.split(":")[0] == "router" and "ports" not in router
    for cell in settings.cells.values():
        [server] = cell.app_servers
        assert server.split(":")[0] in services


def _settings(monkeypatch):
    from migrator.config import load_settings

    monkeypatch.setenv("POSTGRES_PASSWORD", "pw")
    return load_settings(DEPLOY / "compose" / "migrator.yaml")


def test_workers_split_by_queue_with_unique_names_and_metrics_ports(monkeypatch):
    from migrator.moves.dispatch import all_queues

    settings = _settings(monkeypatch)
    workers = {n: s for n, s in _migrator_services().items() if _argv(s)[3:4] == ["worker"]}
    queues, names, ports = [], [], []
    for svc in workers.values():
        argv = _argv(svc)
        queues += argv[argv.index("-Q") + 1].split(",")
        names.append(argv[argv.index("-n") + 1])
        ports.append(_env(svc)["MIGRATOR_OBSERVABILITY__WORKER_METRICS_PORT"])
    assert sorted(queues) == sorted(all_queues(settings)), "every queue consumed exactly once"
    assert len(set(names)) == len(names) and len(set(ports)) == len(ports)

    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "migrator-worker"]
    targets = {t: sc["labels"]["queue"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, svc in workers.items():
        argv = _argv(svc)
        target = f"{name}:{_env(svc)['MIGRATOR_OBSERVABILITY__WORKER_METRICS_PORT']}"
        assert targets.get(target) == argv[argv.index("-Q") + 1], f"prometheus does not scrape {target}"


def test_scrape_targets_are_compose_services(monkeypatch):
    services = _services()
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                assert host == "localhost" or host in services, f"{job['job_name']}: {target}"
    settings = _settings(monkeypatch)
    api = _argv(services["api"])
    assert api[api.index("--port") + 1] == str(settings.api.listen_port)
    exporter = _argv(services["exporter"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["migrator-exporter"]["static_configs"][0]["targets"] == [
        f"exporter:{exporter[exporter.index('--port') + 1]}"]
    if "migrator-api" in jobs:
        assert jobs["migrator-api"]["static_configs"][0]["targets"] == [f"api:{settings.api.listen_port}"]


def test_config_in_the_containers_points_at_compose_services(monkeypatch):
    settings = _settings(monkeypatch)
    services = _services()
    hosts = [settings.control_dsn, settings.broker_url, *(c.dsn for c in settings.cells.values())]
    for url in hosts:
        host = re.match(r"\w+://(?:[^@/]*@)?([^:/]+)", url).group(1)
        assert host in services, url
    assert settings.topology.address.split(":")[0] in services
    assert settings.topology.listen.startswith("0.0.0.0:")
    init = (DEPLOY / "compose" / "postgres-init.sql").read_text()
    for url in [settings.control_dsn, *(c.dsn for c in settings.cells.values())]:
        assert f"CREATE DATABASE {url.rsplit('/', 1)[1]};" in init
    for cell in settings.cells.values():
        assert cell.blobs.path.startswith("/srv/blobs/")


def test_bind_mounts_exist_and_named_volumes_are_declared():
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret}"


def test_required_variables_fail_loudly():
    """Secrets come from the environment, never defaults in the file."""
    text = COMPOSE.read_text()
    for var in ("POSTGRES_PASSWORD", "MIGRATOR_API_TOKEN", "FLOWER_BASIC_AUTH"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), var


def test_dockerfile():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    instructions = [line.split()[0].upper() for line in lines if not line.startswith(("&&", "\\"))]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "run as a non-root user"
    assert 'ENTRYPOINT ["migrator"]' in lines
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!migrator/" in ignore and "!tasks/" in ignore


def _has_compose() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="no `docker compose` on this machine: structure checked above only")
def test_docker_compose_config():
    env = {**os.environ, "POSTGRES_PASSWORD": "pw", "MIGRATOR_API_TOKEN": "x" * 32, "FLOWER_BASIC_AUTH": "ops:pw"}
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=Path(COMPOSE).parent)
    assert result.returncode == 0, result.stderr
