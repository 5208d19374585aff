#!/usr/bin/env bash
# The audit log at custody volume (docs/benchmarks.md, "The audit log at
# custody volume"): makes a store of N records through the real commit path
# (the ignored test fill_a_store_for_the_benchmark in tests/audit_stream.rs:
# signature records MACed under the SoftHSM-derived audit key and committed
# by the provider's group commit, without a client), then measures with
# /usr/bin/time -v the store's bytes per record, `audit verify` and
# `audit export > /dev/null` (wall time, rate, peak RSS), each run with the
# load average before it, and last (it removes records) `audit checkpoint`
# and `audit archive` when the binary has them.
#
#   tools/bench/audit.sh [--engine sqlite|postgres] [--records N] [--runs R]
#                        [--work DIR] [--keep] [--compare NAME=BIN]...
#                        [--steps fill,size,run,archive]
#
# --engine postgres makes its own database (p11derive_bench_PID) on the
# shared server of tools/pg.sh (started if it is not running; never
# stopped) and drops it at the end unless --keep.
# --compare NAME=BIN adds another build's p11derive to the runs,
# interleaved with this one's (run 1 of each, run 2 of each, ...); a
# BIN whose name ends in @11 reads a copy of the SQLite store put back to
# schema 11 (the builds before schema 12, whose only change is two indexes
# on the lane table, empty on SQLite). Each export's SHA-256 is taken once
# per build (not timed) and compared.
# --work DIR with a store made before (--steps run) measures it again.
#
# Environment: P11DERIVE_BIN (this build's CLI; default
# $CARGO_TARGET_DIR/release/p11derive), P11DERIVE_FILL_THREADS (64).
# Output: lines "RESULT engine records build command run wall_s user_s
# sys_s maxrss_kib rate_per_s load1" on standard output, details in DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
engine=sqlite
records=1000000
runs=3
work=
keep=0
steps=fill,size,run,archive
compare=()
while [ $# -gt 0 ]; do
    case "$1" in
    --engine) engine=$2; shift 2 ;;
    --records) records=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --compare) compare+=("$2"); shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "audit.sh: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
case "$engine" in sqlite | postgres) ;; *) echo "audit.sh: --engine sqlite or postgres, not $engine" >&2; exit 2 ;; esac
has_step() { case ",$steps," in *",$1,"*) return 0 ;; esac; return 1; }

target=${CARGO_TARGET_DIR:-$here/target}
bin=${P11DERIVE_BIN:-$target/release/p11derive}
[ -x "$bin" ] || { echo "audit.sh: no CLI at $bin: build it (cargo build --release --bin p11derive) or set P11DERIVE_BIN" >&2; exit 1; }
export P11DERIVE_FILL_THREADS=${P11DERIVE_FILL_THREADS:-64}
export P11DERIVE_PIN=${P11DERIVE_PIN:-123456}
asset=bench-p256

log() { printf 'audit.sh: %s\n' "$*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/p11derive-audit-bench.XXXXXX")
fi
mkdir -p "$work"
fresh=0
[ -f "$work/p11derive.toml" ] || fresh=1
export SOFTHSM2_CONF="$work/softhsm2.conf"
export P11DERIVE_CONF="$work/p11derive.toml"
db=

if [ "$fresh" = 1 ]; then
    mkdir -p "$work/tokens"
    cat > "$SOFTHSM2_CONF" <<CONF
directories.tokendir = $work/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
    softhsm2-util --init-token --free --label custody-root --pin "$P11DERIVE_PIN" --so-pin 87654321 >/dev/null
    if [ "$engine" = postgres ]; then
        admin=$("$here/tools/pg.sh" start | tail -1)
        db=p11derive_bench_$$
        psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
        echo "$db" > "$work/database"
        store="url = \"${admin%/*}/$db\"
sslmode = \"disable\""
    else
        store="path = \"$work/state.db\""
    fi
    cat > "$P11DERIVE_CONF" <<CONF
[token]
label = "p11derive"

[backend]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "custody-root"
root_label = "p11derive-root"

[store]
$store

[log]
file = "$work/p11derive.log"
CONF
    "$bin" init >/dev/null
    "$bin" asset create "$asset" --type p256 >/dev/null
elif [ -f "$work/database" ]; then
    db=$(cat "$work/database")
fi
admin=${admin:-}
if [ "$engine" = postgres ] && [ -z "$admin" ]; then admin=$("$here/tools/pg.sh" url); fi
dburl=${admin%/*}/$db

cleanup() {
    if [ "$engine" = postgres ] && [ "$keep" = 0 ] && [ -n "$db" ]; then
        psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
        rm -f "$work/database"
        log "dropped the database $db"
    fi
}
trap cleanup EXIT

if has_step fill; then
    log "filling to $records records ($P11DERIVE_FILL_THREADS threads) in $work"
    start=$(date +%s.%N)
    l0=$(load1)
    (cd "$here" && P11DERIVE_FILL_TO=$records P11DERIVE_FILL_ASSET=$asset \
        cargo test --release --test audit_stream fill_a_store_for_the_benchmark -- --ignored --exact --nocapture) \
        >"$work/fill.log" 2>&1 || { tail -30 "$work/fill.log" >&2; exit 1; }
    end=$(date +%s.%N)
    grep '^fill:' "$work/fill.log" >&2 || true
    echo "FILL $engine $records $(echo "$end - $start" | bc) s load $l0 -> $(load1)"
fi

# Records in the log (main chain and lanes).
count() {
    if [ "$engine" = postgres ]; then
        psql -qAt "$dburl" -c "SELECT (SELECT COUNT(*) FROM audit) + (SELECT COUNT(*) FROM audit_lane)"
    else
        sqlite3 "$work/state.db" "SELECT COUNT(*) FROM audit"
    fi
}

if has_step size; then
    n=$(count)
    if [ "$engine" = postgres ]; then
        psql -q "$dburl" -c "VACUUM ANALYZE audit" -c "VACUUM ANALYZE audit_lane" >/dev/null
        read -r a l d < <(psql -qAt -F ' ' "$dburl" -c \
            "SELECT pg_total_relation_size('audit'), pg_total_relation_size('audit_lane'), pg_database_size(current_database())")
        echo "SIZE postgres records $n audit $a audit_lane $l database $d bytes_per_record $(((a + l) / n))"
    else
        sqlite3 "$work/state.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
        s=$(($(stat -c %s "$work/state.db") + $(stat -c %s "$work/state.db-wal" 2>/dev/null || echo 0)))
        echo "SIZE sqlite records $n file $s bytes_per_record $((s / n))"
    fi
fi

# The builds measured: this one and each --compare NAME=BIN.
names=(this)
bins=("$bin")
for c in "${compare[@]}"; do
    names+=("${c%%=*}")
    bins+=("${c#*=}")
done

# A build's config: the store itself, or for BIN@11 a copy put back to
# schema 11 (SQLite only).
conf_for() {
    local b=$1
    case "$b" in
    *@11)
        if [ ! -f "$work/old/state.db" ]; then
            mkdir -p "$work/old"
            sqlite3 "$work/state.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
            cp "$work/state.db" "$work/old/state.db"
            sqlite3 "$work/old/state.db" "DROP INDEX audit_lane_change; DROP INDEX audit_lane_time; PRAGMA user_version = 11;"
            sed "s|$work/state.db|$work/old/state.db|" "$P11DERIVE_CONF" > "$work/old/p11derive.toml"
        fi
        echo "$work/old/p11derive.toml"
        ;;
    *) echo "$P11DERIVE_CONF" ;;
    esac
}

# One timed run: prints a RESULT line.
timed() {
    local name=$1 b=$2 what=$3 run=$4 n=$5 conf l
    conf=$(conf_for "$b")
    l=$(load1)
    local t="$work/time.$name.$what.$run"
    if [ "$what" = export ]; then
        P11DERIVE_CONF=$conf /usr/bin/time -v -o "$t" "${b%@11}" audit export >/dev/null
    else
        P11DERIVE_CONF=$conf /usr/bin/time -v -o "$t" "${b%@11}" audit "$what" >"$work/out.$name.$what.$run"
    fi
    local wall user sys rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$t")
    user=$(awk -F': ' '/User time/ {print $2}' "$t")
    sys=$(awk -F': ' '/System time/ {print $2}' "$t")
    rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$t")
    echo "RESULT $engine $n $name $what $run $wall $user $sys $rss $(echo "$n / $wall" | bc) $l"
}

if has_step run; then
    n=$(count)
    for r in $(seq 1 "$runs"); do
        for i in "${!bins[@]}"; do
            timed "${names[$i]}" "${bins[$i]}" verify "$r" "$n"
            timed "${names[$i]}" "${bins[$i]}" export "$r" "$n"
        done
    done
    for i in "${!bins[@]}"; do
        head -c 300 "$work/out.${names[$i]}.verify.1" | head -1 >&2
        b=${bins[$i]}
        h=$(P11DERIVE_CONF=$(conf_for "$b") "${b%@11}" audit export | sha256sum | cut -d' ' -f1)
        echo "SHA256 ${names[$i]} export $h"
    done
fi

if has_step archive; then
    if "$bin" audit --help 2>&1 | grep -q archive; then
        l=$(load1)
        /usr/bin/time -v -o "$work/time.checkpoint" "$bin" audit checkpoint >&2
        # --before takes whole seconds: one later than the checkpoint's.
        sleep 1.1
        before=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        n=$(count)
        /usr/bin/time -v -o "$work/time.archive" "$bin" audit archive --before "$before" --to "$work/segment-1.jsonl" >&2
        for s in checkpoint archive; do
            echo "ARCHIVE $engine $n $s wall $(awk -F': ' '/Elapsed/ {print $2}' "$work/time.$s") rss $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.$s") load $l"
        done
        echo "ARCHIVE $engine records left $(count) segment $(stat -c %s "$work/segment-1.jsonl") bytes"
    else
        log "archive: skipped: $bin has no 'audit archive' (issue 26's archive is not in this build)"
    fi
fi
log "work directory: $work"
