#!/usr/bin/env bash
# A private PostgreSQL server for the tests and the benchmark: Debian's
# postgresql package (installed by tools/setup.sh), its own data directory,
# listening on 127.0.0.1 only, password authentication over TCP.
#
#   tools/pg.sh start   start it (or reuse it) and print its admin URL
#   tools/pg.sh stop    stop it
#   tools/pg.sh url     print the admin URL
#   tools/pg.sh bouncer-start BPORT USER=PASSWORD...
#                       start a PgBouncer (Debian's pgbouncer) in transaction
#                       pool mode on 127.0.0.1:BPORT in front of this server,
#                       for the users named (SCRAM between client and bouncer)
#   tools/pg.sh bouncer-stop BPORT
#
# P11DERIVE_PG_PORT (default 55432) and P11DERIVE_PG_DIR (default
# /tmp/p11derive-pg-PORT) choose the port and the data directory.
# P11DERIVE_PG_TLS_DIR, when set at the first start, names a directory
# holding server.crt and server.key: the server then runs with ssl=on and
# accepts TCP connections over TLS only (pg_hba: hostssl).
set -euo pipefail

port=${P11DERIVE_PG_PORT:-55432}
dir=${P11DERIVE_PG_DIR:-/tmp/p11derive-pg-$port}
tls=${P11DERIVE_PG_TLS_DIR:-}
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
        if [ -n "$tls" ]; then
            install -m 600 "$tls/server.crt" "$dir/server.crt"
            install -m 600 "$tls/server.key" "$dir/server.key"
            [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/server.crt" "$dir/server.key"
            printf '%s\n' "local all all trust" \
                "hostssl all all 127.0.0.1/32 scram-sha-256" > "$dir/pg_hba.conf"
            echo "ssl = on" >> "$dir/postgresql.conf"
        fi
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
bouncer-start)
    bport=${2:?usage: tools/pg.sh bouncer-start BPORT USER=PASSWORD...}
    shift 2
    command -v pgbouncer >/dev/null || {
        echo "pg.sh: pgbouncer is not installed; run tools/setup.sh" >&2
        exit 1
    }
    bdir=/tmp/p11derive-pgbouncer-$bport
    mkdir -p "$bdir"
    chmod 700 "$bdir"
    : > "$bdir/users.txt"
    for pair in "$@"; do
        printf '"%s" "%s"\n' "${pair%%=*}" "${pair#*=}" >> "$bdir/users.txt"
    done
    cat > "$bdir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $bdir/users.txt
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
INI
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$bdir"
    if [ -f "$bdir/pgbouncer.pid" ] && kill -0 "$(cat "$bdir/pgbouncer.pid")" 2>/dev/null; then
        kill -HUP "$(cat "$bdir/pgbouncer.pid")"
    else
        as_owner pgbouncer -d "$bdir/pgbouncer.ini" || {
            tail -20 "$bdir/pgbouncer.log" >&2
            exit 1
        }
    fi
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break
        sleep 0.1
    done
    echo "postgres://127.0.0.1:$bport"
    ;;
bouncer-stop)
    bport=${2:?usage: tools/pg.sh bouncer-stop BPORT}
    pidfile=/tmp/p11derive-pgbouncer-$bport/pgbouncer.pid
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
    ;;
*)
    echo "usage: tools/pg.sh start|stop|url|bouncer-start BPORT USER=PASSWORD...|bouncer-stop BPORT" >&2
    exit 2
    ;;
esac
