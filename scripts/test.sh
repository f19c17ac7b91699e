#!/usr/bin/env bash
# The test command: install into ./.venv, then run the whole suite (unit, integration, short faults).
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth; MIGRATOR_TEST_PG overrides) and the redis-server
# binary (each test session starts its own Redis on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/pytest -p no:cacheprovider "$@"
