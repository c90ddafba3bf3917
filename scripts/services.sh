#!/usr/bin/env bash
# Makes sure Postgres, RabbitMQ and Redis answer on localhost, installing them
# from the distribution's packages when absent (Debian/Ubuntu), starting any
# that is down, and creating Courier's Postgres role and database.
#
# Postgres: a role `courier` (password `courier`, CREATEDB so the tests can make
# their own databases) and a database `courier`, created through the local
# socket as the `postgres` OS user, which works whatever the TCP auth method.
set -euo pipefail

log() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

pg_up() { pg_isready -q -h 127.0.0.1 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; }

# Install only what is neither installed nor already answering (e.g. from docker compose).
missing=()
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
pg_up || command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
rabbit_up || command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
redis_up || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || { echo "install ${missing[*]} (or use docker-compose.yml) and run again" >&2; exit 1; }
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! pg_up; then
  log "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  pg_isready -q -h 127.0.0.1 || { echo "PostgreSQL did not start" >&2; exit 1; }
fi

rabbit_start() {
  as_root rabbitmq-server -detached || true
  for _ in $(seq 1 60); do as_root rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
}
if ! rabbit_up; then
  log "starting RabbitMQ"
  rabbit_start
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { echo "RabbitMQ did not start" >&2; exit 1; }
fi

# A local broker can answer on 5672 and still be unable to run quorum queues
# (RabbitMQ 3.10 got there here after quorum queues were deleted while still
# starting; every test then fails). Probe by declaring and deleting one; on
# failure restart the broker. Skipped for a broker this machine does not run
# (docker compose): rabbitmqctl cannot reach it.
quorum_ok() {
  as_root timeout 60 rabbitmqctl -q eval '
    Q = rabbit_misc:r(<<"/">>, queue, <<"courier.services.probe">>),
    case rabbit_amqqueue:declare(Q, true, false, [{<<"x-queue-type">>, longstr, <<"quorum">>}], none, <<"services.sh">>) of
      {new, _} -> ok; {existing, _} -> ok; Other -> Other
    end.' 2>/dev/null | grep -qx ok \
    && as_root timeout 60 rabbitmqctl -q delete_queue courier.services.probe >/dev/null 2>&1
}
if command -v rabbitmqctl >/dev/null 2>&1 && as_root timeout 30 rabbitmqctl -q status >/dev/null 2>&1 && ! quorum_ok; then
  log "RabbitMQ answers but cannot run quorum queues; restarting it"
  as_root timeout 120 rabbitmqctl -q stop >/dev/null 2>&1 || true
  rabbit_start
  quorum_ok || { echo "RabbitMQ still cannot run quorum queues; see its log" >&2; exit 1; }
fi

if ! redis_up; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.5; done
  redis-cli -h 127.0.0.1 ping >/dev/null || { echo "Redis did not start" >&2; exit 1; }
fi

if ! PGPASSWORD=courier psql -qtA -h 127.0.0.1 -U courier -d courier -c 'SELECT 1' >/dev/null 2>&1; then
  log "creating the Postgres role and database 'courier'"
  as_postgres psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'courier'" | grep -q 1 \
    || as_postgres psql -qc "CREATE ROLE courier LOGIN PASSWORD 'courier' CREATEDB"
  as_postgres psql -qtAc "SELECT 1 FROM pg_database WHERE datname = 'courier'" | grep -q 1 \
    || as_postgres psql -qc "CREATE DATABASE courier OWNER courier"
fi
log "Postgres, RabbitMQ and Redis are up"
