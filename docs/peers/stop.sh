#!/usr/bin/env bash
# Stops the PostgreSQL and Redis instances started by run.sh (only those).
DIR=${PEERS_DIR:-/tmp/peers}
if [ -s "$DIR/pgdata/postmaster.pid" ]; then
  su pgbench -c "/usr/local/bin/pg_ctl -D $DIR/pgdata -m fast -w stop" || true
fi
if redis-cli -h 127.0.0.1 -p 25902 ping >/dev/null 2>&1; then
  redis-cli -h 127.0.0.1 -p 25902 shutdown || true
fi
echo "# stopped"
