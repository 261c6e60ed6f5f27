#!/usr/bin/env bash
# Starts PostgreSQL (127.0.0.1:25901) and Redis (127.0.0.1:25902) if they are
# not running, builds peerbench, and runs every peer x durability x scenario.
# Extra arguments are passed to every run, e.g.: ./run.sh -n 2000 -latency-n 500
# Run as root on a Debian machine with PostgreSQL 15 in /usr/local/bin: it
# makes an OS user pgbench (initdb refuses root), installs Debian's
# redis-server if missing, and keeps its data in $PEERS_DIR (/tmp/peers).
set -euo pipefail
DIR=${PEERS_DIR:-/tmp/peers}
PGBIN=/usr/local/bin
PGPORT=25901
REDISPORT=25902
PGUSER_OS=pgbench
export PATH=/usr/local/go/bin:$PATH
SRC=$(cd "$(dirname "$0")" && pwd)

# --- PostgreSQL 15 (fsync=on, synchronous_commit set per connection by peerbench)
id "$PGUSER_OS" >/dev/null 2>&1 || useradd -m "$PGUSER_OS"
# PostgreSQL keeps its socket and log here, so the directory is the user's.
install -d -o "$PGUSER_OS" "$DIR"
if [ ! -s "$DIR/pgdata/PG_VERSION" ]; then
  install -d -o "$PGUSER_OS" "$DIR/pgdata"
  su "$PGUSER_OS" -c "$PGBIN/initdb -D $DIR/pgdata -U postgres --auth=trust -E UTF8" >"$DIR/initdb.log"
fi
if ! su "$PGUSER_OS" -c "$PGBIN/pg_ctl -D $DIR/pgdata status" >/dev/null 2>&1; then
  su "$PGUSER_OS" -c "$PGBIN/pg_ctl -D $DIR/pgdata -l $DIR/pgdata/server.log -w -o '-p $PGPORT -c listen_addresses=127.0.0.1 -c max_connections=200 -c unix_socket_directories=$DIR' start" >/dev/null
fi
echo "# postgres: $(su "$PGUSER_OS" -c "$PGBIN/pg_ctl -D $DIR/pgdata status" | head -1)"

# --- Redis 7 (own instance; AOF on; appendfsync set per run by peerbench)
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
mkdir -p "$DIR/redis"
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p $REDISPORT ping 2>/dev/null)" = PONG ]; }
if ! redis-cli -h 127.0.0.1 -p $REDISPORT ping >/dev/null 2>&1; then
  redis-server --port $REDISPORT --bind 127.0.0.1 --dir "$DIR/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/redis.log"
fi
for _ in $(seq 300); do redis_ready && break; sleep 0.1; done
redis_ready || { echo "redis on port $REDISPORT is not ready" >&2; exit 1; }
echo "# redis: $(redis-cli -h 127.0.0.1 -p $REDISPORT ping)"

# --- build
go -C "$SRC" build -o "$DIR/peerbench" .

# --- runs
mkdir -p "$DIR/results"
OUT="$DIR/results/run-$(date +%Y%m%d-%H%M%S).txt"
echo "# uptime: $(uptime)" | tee "$OUT"
rc=0
for spec in river:sync river:async asynq:always asynq:everysec; do
  peer=${spec%%:*}; dur=${spec##*:}
  for scen in e2e latency; do
    echo "# --- peer=$peer durability=$dur scenario=$scen $*" | tee -a "$OUT"
    if ! "$DIR/peerbench" -peer "$peer" -durability "$dur" -scenario "$scen" "$@" 2>&1 | tee -a "$OUT"; then
      rc=1
    fi
  done
done
echo "# results saved in $OUT"
exit $rc
