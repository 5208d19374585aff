#!/usr/bin/env bash
# A private PostgreSQL server for the tests and the benchmark: Debian's
# postgresql package (installed by tools/setup.sh), its own data directory,
# listening on 127.0.0.1 only, password authentication over TCP.
#
#   tools/pg.sh start   start it (or reuse it) and print its admin URL
#   tools/pg.sh stop    stop it
#   tools/pg.sh url     print the admin URL
#
# P11DERIVE_PG_PORT (default 55432) and P11DERIVE_PG_DIR (default
# /tmp/p11derive-pg-PORT) choose the port and the data directory.
set -euo pipefail

port=${P11DERIVE_PG_PORT:-55432}
dir=${P11DERIVE_PG_DIR:-/tmp/p11derive-pg-$port}
password=p11derive-test-admin
url="postgres://postgres:$password@127.0.0.1:$port/postgres"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
    echo "pg.sh: PostgreSQL is not installed; run tools/setup.sh (it installs Debian's postgresql)" >&2
    exit 1
fi

# initdb and the server refuse to run as root: as root, they run as postgres.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-start}" in
start)
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
        chmod 700 "$dir"
        printf '%s\n' "$password" > "$dir.pw"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$dir.pw"
        as_owner "$bin/initdb" -D "$dir" -U postgres --pwfile="$dir.pw" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >"$dir.initdb.log" 2>&1 || {
            cat "$dir.initdb.log" >&2
            exit 1
        }
        rm -f "$dir.pw"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
            start >/dev/null || {
            tail -20 "$dir/server.log" >&2
            exit 1
        }
    fi
    echo "$url"
    ;;
stop)
    if [ -f "$dir/PG_VERSION" ]; then
        as_owner "$bin/pg_ctl" -D "$dir" -w -m fast stop >/dev/null 2>&1 || true
    fi
    ;;
url)
    echo "$url"
    ;;
*)
    echo "usage: tools/pg.sh start|stop|url" >&2
    exit 2
    ;;
esac
