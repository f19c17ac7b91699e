#!/usr/bin/env bash
# The main job on this machine's PostgreSQL and Redis: provision three cells, seed organizations,
# and move one of them from cell-1 to cell-2 with live progress (exits 0 only if it verified).
# Everything it creates lives in ./.quickstart/ and in databases named cm_quickstart_*.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work="$PWD/.quickstart"
mkdir -p "$work"
export MIGRATOR_CONFIG=${MIGRATOR_CONFIG:-$work/migrator.yaml}
migrator topology certs init "$work/certs" >/dev/null   # the Topology Service's mutual TLS (kept across runs)
PG=${QUICKSTART_PG:-postgresql://postgres@127.0.0.1:5432}
if [ ! -f "$MIGRATOR_CONFIG" ]; then
  cat > "$MIGRATOR_CONFIG" <<YAML
control_dsn: $PG/cm_quickstart_control
broker_url: ${QUICKSTART_REDIS:-redis://127.0.0.1:6379/0}
cells:
  cell-1: {dsn: $PG/cm_quickstart_cell1, blobs: {path: $work/blobs/cell-1}}
  cell-2: {dsn: $PG/cm_quickstart_cell2, blobs: {path: $work/blobs/cell-2}}
  cell-3: {dsn: $PG/cm_quickstart_cell3, blobs: {path: $work/blobs/cell-3}}
topology:
  address: 127.0.0.1:50151
  listen: 127.0.0.1:50151
  tls: {ca: $work/certs/ca.pem, server_cert: $work/certs/server.pem, server_key: $work/certs/server-key.pem,
        client_cert: $work/certs/admin.pem, client_key: $work/certs/admin-key.pem}
celery: {queue_prefix: "quickstart-"}
YAML
fi
for db in control cell1 cell2 cell3; do
  psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'cm_quickstart_$db'" | grep -q 1 \
    || psql "$PG/postgres" -qc "CREATE DATABASE cm_quickstart_$db"
done
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
migrator topology serve >"$work/topology.log" 2>&1 & pids+=($!)
MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT="$work/certs/mover.pem" MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY="$work/certs/mover-key.pem" \
  celery -A tasks worker -B -s "$work/beat-schedule" --loglevel=INFO --concurrency=2 >"$work/worker.log" 2>&1 & pids+=($!)
migrator cells init
migrator schema check
org=$(migrator seed --cell cell-1 --orgs 3 --rows 30000 --blobs 30 --json \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["organizations"][0]["organization_id"])')
migrator move --org "$org" --to cell-2 --reason quickstart --wait
migrator cells list
