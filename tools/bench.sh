#!/usr/bin/env bash
# The benchmark: the same scenarios against p11derive (SoftHSM
# behind it, audit durable) and against SoftHSM itself with stored keys of
# the same types, interleaved in one run, with the ratios.
#
#   bash tools/bench.sh [--seconds S] [--write] [--pg-only | --gcm-only | --hosts-only | --users-only | --ed-hd-only]
#                       [--reps N] [--delay-ms MS] [--baseline-so PATH [--baseline-bin PATH]]
#
# --write puts the tables into docs/benchmarks.md with the machine and date.
# The second table runs warm signing with the store on PostgreSQL (a server
# tools/pg.sh starts on loopback) beside the SQLite store; --pg-only runs
# just that one and the multi-host scenarios; --gcm-only runs just the
# AES-GCM rows (the cost of refusing repeated IVs).
# Each run is one process of tools/bench (p11bench): warm-up 0.5 s, then S
# seconds measured (default 3).
#
# The multi-host scenarios (tools/bench/hosts.sh): 1 × 16, 2 × 8
# and 4 × 4 provider processes × signing threads on one PostgreSQL store,
# on loopback and through an emulated network (tools/netdelay.rs, --delay-ms
# each way, default 1), each the median of --reps runs (default 3).
# --hosts-only runs just those (with --write it rewrites just their tables).
# Users mode (people log in as name:secret; a policy with a rate limit high
# enough never to refuse, counted at every commit): warm signing at 8
# threads beside pass-through mode on the same store, --reps runs each,
# interleaved, medians; --users-only runs just that.
# Ed25519 and HD children: warm Ed25519 signing (CKM_EDDSA) beside SoftHSM's
# own Ed25519 key when SoftHSM lists CKM_EC_EDWARDS_KEY_PAIR_GEN and
# CKM_EDDSA (else the rows say "SoftHSM has no Ed25519"), and warm signing
# with an HD child (C_DeriveKey with CKM_P11DERIVE_HD_CHILD once per thread:
# secp256k1 m/44'/0'/0'/0/0, Ed25519 m/44'/501'/0'/0') beside the asset's own
# key and SoftHSM's stored key of the type; --ed-hd-only runs just those
# (with --write it rewrites just the HD children's table).
# --baseline-so runs them also with another build's provider (its CLI from
# --baseline-bin, default p11derive beside the .so) on a database of its
# own, interleaved, and puts it beside (docs/benchmarks.md says how to build
# one from an older commit).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=3
WRITE=0
PG_ONLY=0
GCM_ONLY=0
HOSTS_ONLY=0
USERS_ONLY=0
ED_HD_ONLY=0
REPS=3
DELAY_MS=1
BASE_SO=
BASE_BIN=
USAGE="usage: bash tools/bench.sh [--seconds S] [--write] [--pg-only | --gcm-only | --hosts-only | --users-only | --ed-hd-only] [--reps N] [--delay-ms MS] [--baseline-so PATH [--baseline-bin PATH]]"
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --write) WRITE=1; shift ;;
        --pg-only) PG_ONLY=1; shift ;;
        --gcm-only) GCM_ONLY=1; shift ;;
        --hosts-only) HOSTS_ONLY=1; shift ;;
        --users-only) USERS_ONLY=1; shift ;;
        --ed-hd-only) ED_HD_ONLY=1; shift ;;
        --reps) REPS=$2; shift 2 ;;
        --delay-ms) DELAY_MS=$2; shift 2 ;;
        --baseline-so) BASE_SO=$(realpath "$2"); shift 2 ;;
        --baseline-bin) BASE_BIN=$(realpath "$2"); shift 2 ;;
        *) echo "$USAGE" >&2; exit 2 ;;
    esac
done
if [ "$WRITE" = 1 ] && [ "$PG_ONLY$GCM_ONLY$USERS_ONLY" != 000 ]; then
    echo "bench.sh: --write needs the whole run (it rewrites every table), --hosts-only or --ed-hd-only (their tables); drop --pg-only / --gcm-only / --users-only" >&2
    exit 2
fi
if [ -n "$BASE_SO" ]; then
    BASE_BIN=${BASE_BIN:-$(dirname "$BASE_SO")/p11derive}
    for f in "$BASE_SO" "$BASE_BIN"; do
        [ -f "$f" ] || { echo "bench.sh: the baseline build has no $f; build it as docs/benchmarks.md says (\"The baseline\")" >&2; exit 2; }
    done
fi
bash tools/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
OUT=$(realpath "${CARGO_TARGET_DIR:-target}")/release
export P11DERIVE_BIN="$OUT/p11derive"
BENCH="$OUT/p11bench"
NETDELAY="$OUT/p11netdelay"
P11DERIVE="$OUT/libp11derive.so"
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
# shellcheck source=tools/softhsm-env.sh
source tools/softhsm-env.sh >/dev/null
PG_STARTED=0
PROXY_PIDS=()
trap 'for p in "${PROXY_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$P11DERIVE_WORK"; if [ "$PG_STARTED" = 1 ]; then bash tools/pg.sh stop; fi' EXIT
W=$P11DERIVE_WORK
printf '%s' "$P11DERIVE_PIN" > "$W/pin"
LOG="$W/p11derive.log"

# The keys: derived assets in p11derive, stored keys of the same types in
# SoftHSM (on the backing token itself).
for t in secp256k1 p256 ed25519 aes256 hmac-sha256; do
    "$P11DERIVE_BIN" asset create "bench-$t" --type "$t" >/dev/null
done
sh() { pkcs11-tool --module "$SOFTHSM" --token-label custody-root --login --pin "$P11DERIVE_PIN" "$@" >/dev/null; }
sh --keypairgen --key-type EC:secp256k1 --label bench-secp256k1
sh --keypairgen --key-type EC:prime256v1 --label bench-p256
sh --keygen --key-type AES:32 --label bench-aes256
# SoftHSM signs Ed25519 only when built with an OpenSSL that has it: asked
# at run time (C_GetMechanismList), the rows say so when it has not.
SOFTHSM_ED25519=0
if [ "$("$BENCH" --module "$SOFTHSM" --token custody-root --key - --op has-ed25519)" = ed25519=yes ]; then
    SOFTHSM_ED25519=1
    "$BENCH" --module "$SOFTHSM" --token custody-root --key bench-ed25519 --op make-ed25519-key \
        --pin-file "$W/pin" >/dev/null
fi
"$BENCH" --module "$SOFTHSM" --token custody-root --key bench-hmac-sha256 --op make-hmac-key \
    --pin-file "$W/pin" >/dev/null
# Cold first use: with the cache off, every operation derives its key.
sed 's/^\[log\]/[cache]\nttl_seconds = 0\n\n[log]/' "$P11DERIVE_CONF" > "$W/cold.toml"

run() { # MODULE TOKEN KEY OP THREADS [CONF]
    local conf=${6:-$P11DERIVE_CONF} stats=()
    [ "$1" = "$P11DERIVE" ] && stats=(--stats-log "${STATS_LOG:-$LOG}")
    P11DERIVE_CONF=$conf "$BENCH" --module "$1" --token "$2" --key "$3" --op "$4" --threads "$5" \
        --seconds "$SECONDS_EACH" --pin-file "$W/pin" "${stats[@]}"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

rows=()
row() { # SCENARIO KEY THREADS P11DERIVE_LINE SOFTHSM_LINE
    local d=$4 s=$5 ratio
    ratio=$(python3 -c "print(f'{$(field ops_per_s "$d") / max($(field ops_per_s "$s"), 1):.2f}')")
    rows+=("| $1 | $2 | $3 | $(field ops_per_s "$d") | $(field p50_us "$d") / $(field p99_us "$d") / $(field p999_us "$d") | $(field ops_per_s "$s") | $(field p50_us "$s") / $(field p99_us "$s") / $(field p999_us "$s") | **${ratio}×** | $(field derivations_per_1k "$d") / $(field anchor_calls_per_1k "$d") / $(field other_hsm_calls_per_1k "$d") | $(field fsyncs_per_1k "$d") | $(field peak_rss_kib "$d") / $(field peak_rss_kib "$s") |")
    echo "${rows[-1]}"
}
# A row with no SoftHSM figure beside it (SoftHSM has no such key).
row_alone() { # SCENARIO KEY THREADS P11DERIVE_LINE WHY
    local d=$4
    rows+=("| $1 | $2 | $3 | $(field ops_per_s "$d") | $(field p50_us "$d") / $(field p99_us "$d") / $(field p999_us "$d") | $5 | — | — | $(field derivations_per_1k "$d") / $(field anchor_calls_per_1k "$d") / $(field other_hsm_calls_per_1k "$d") | $(field fsyncs_per_1k "$d") | $(field peak_rss_kib "$d") / — |")
    echo "${rows[-1]}"
}
ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}')"; }

# Warm Ed25519 signing (CKM_EDDSA over 32 bytes), rows of the main table.
ed25519_rows() {
    local threads d s
    for threads in 1 2 8 32; do
        d=$(run "$P11DERIVE" p11derive bench-ed25519 sign "$threads")
        if [ "$SOFTHSM_ED25519" = 1 ]; then
            s=$(run "$SOFTHSM" custody-root bench-ed25519 sign "$threads")
            row "warm sign (EdDSA)" ed25519 "$threads" "$d" "$s"
        else
            row_alone "warm sign (EdDSA)" ed25519 "$threads" "$d" "SoftHSM has no Ed25519"
        fi
    done
}

# Warm signing with an HD child, derived once per thread, beside the
# asset's own key (same run, one after the other) and SoftHSM's stored key.
HD_HEADER="| key | child path | threads | own key ops/s | child ops/s | child p50/p99/p99.9 µs | child / own key | SoftHSM ops/s | child / SoftHSM | C_DeriveKey µs (median of threads) | derivations / anchor / other HSM calls per 1k (child) |"
hdrows=()
hd_section() {
    echo "$HD_HEADER"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    local kt path threads o c s so sr
    for kt in secp256k1 ed25519; do
        if [ "$kt" = secp256k1 ]; then path="m/44'/0'/0'/0/0"; else path="m/44'/501'/0'/0'"; fi
        for threads in 1 2 8 32; do
            o=$(run "$P11DERIVE" p11derive "bench-$kt" sign "$threads")
            c=$(P11DERIVE_CONF=$P11DERIVE_CONF "$BENCH" --module "$P11DERIVE" --token p11derive \
                --key "bench-$kt" --op child-sign --path "$path" --threads "$threads" \
                --seconds "$SECONDS_EACH" --pin-file "$W/pin" --stats-log "$LOG")
            if [ "$kt" = secp256k1 ] || [ "$SOFTHSM_ED25519" = 1 ]; then
                s=$(run "$SOFTHSM" custody-root "bench-$kt" sign "$threads")
                so=$(field ops_per_s "$s")
                sr="**$(ratio "$(field ops_per_s "$c")" "$so")×**"
            else
                so="SoftHSM has no Ed25519"; sr="—"
            fi
            hdrows+=("| $kt | \`$path\` | $threads | $(field ops_per_s "$o") | $(field ops_per_s "$c") | $(field p50_us "$c") / $(field p99_us "$c") / $(field p999_us "$c") | **$(ratio "$(field ops_per_s "$c")" "$(field ops_per_s "$o")")×** | $so | $sr | $(field derive_us "$c") | $(field derivations_per_1k "$c") / $(field anchor_calls_per_1k "$c") / $(field other_hsm_calls_per_1k "$c") |")
            echo "${hdrows[-1]}"
        done
    done
}
hd_block() { # the HD children's block of docs/benchmarks.md
    {
        echo "<!-- bench-hd:begin (written by tools/bench.sh --write or --ed-hd-only --write) -->"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Machine: $(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
        echo "- p11derive $(git rev-parse --short HEAD 2>/dev/null || echo unknown), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null), ${SECONDS_EACH} s per measurement after 0.5 s of warm-up"
        if [ "$ED_HD_ONLY" = 1 ]; then # the Ed25519 rows too (a whole run puts them in the main table)
            echo
            echo "| scenario | key | threads | p11derive ops/s | p11derive p50/p99/p99.9 µs | SoftHSM ops/s | SoftHSM p50/p99/p99.9 µs | ratio | derivations / anchor / other HSM calls per 1k | fsyncs /1k | peak RSS KiB (p11derive / SoftHSM) |"
            echo "|---|---|---|---|---|---|---|---|---|---|---|"
            printf '%s\n' "${rows[@]}"
        fi
        echo
        echo "$HD_HEADER"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        printf '%s\n' "${hdrows[@]}"
        echo "<!-- bench-hd:end -->"
    } > "$W/hd-block.md"
    write_block bench-hd "$W/hd-block.md"
}

# Users mode on the same store: the service credential in a 0600 file, an
# admin, a signer, and a policy on bench-* with a rate limit it never reaches.
users_setup() {
    chmod 600 "$W/pin"
    USERS_CONF="$W/users.toml"
    cp "$P11DERIVE_CONF" "$USERS_CONF"
    printf '\n[users]\nenabled = true\nservice_pin_file = "%s"\n' "$W/pin" >> "$USERS_CONF"
    local admin=(env P11DERIVE_CONF="$USERS_CONF" P11DERIVE_USER=bench-admin P11DERIVE_PIN=bench-admin-secret)
    P11DERIVE_CONF="$USERS_CONF" P11DERIVE_PIN=bench-admin-secret "$P11DERIVE_BIN" init --admin bench-admin >/dev/null
    printf 'bench-signer-secret\n' > "$W/signer.secret"
    chmod 600 "$W/signer.secret"
    "${admin[@]}" "$P11DERIVE_BIN" user add bench-signer --roles signer --patterns 'bench-*' \
        --secret-file "$W/signer.secret" >/dev/null
    "${admin[@]}" "$P11DERIVE_BIN" policy set 'bench-*' --mechanisms ECDSA,ECDSA-SHA256,AES-GCM,SHA256-HMAC \
        --asset-rate 1000000000/60s --user-rate 1000000000/60s >/dev/null
    printf 'bench-signer:bench-signer-secret' > "$W/user.pin"
    chmod 600 "$W/user.pin"
}
median() { python3 -c "import statistics,sys; print(int(statistics.median(float(x) for x in sys.argv[1:])))" "$@"; }
usersrows=()
users_section() {
    users_setup
    USERS_HEADER="| key | threads | pass-through ops/s (runs) | users mode ops/s (runs) | users / pass-through (medians) |"
    echo "$USERS_HEADER"
    echo "|---|---|---|---|---|"
    for kt in p256 secp256k1; do
        local pass=() users=()
        for _ in $(seq "$REPS"); do
            pass+=("$(field ops_per_s "$(run "$P11DERIVE" p11derive "bench-$kt" sign 8)")")
            users+=("$(field ops_per_s "$(P11DERIVE_CONF=$USERS_CONF "$BENCH" --module "$P11DERIVE" --token p11derive \
                --key "bench-$kt" --op sign --threads 8 --seconds "$SECONDS_EACH" --pin-file "$W/user.pin")")")
        done
        local mp mu
        mp=$(median "${pass[@]}"); mu=$(median "${users[@]}")
        usersrows+=("| $kt | 8 | $mp (${pass[*]}) | $mu (${users[*]}) | **$(python3 -c "print(f'{$mu / max($mp, 1):.2f}')")×** |")
        echo "${usersrows[-1]}"
    done
}
if [ "$USERS_ONLY" = 1 ]; then
    users_section
    exit 0
fi

if [ "$ED_HD_ONLY" = 1 ]; then
    # shellcheck source=tools/bench/hosts.sh
    source tools/bench/hosts.sh # write_block
    echo "| scenario | key | threads | p11derive ops/s | p11derive p50/p99/p99.9 µs | SoftHSM ops/s | SoftHSM p50/p99/p99.9 µs | ratio | derivations / anchor / other HSM calls per 1k | fsyncs /1k | peak RSS KiB (p11derive / SoftHSM) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    ed25519_rows
    echo
    hd_section
    [ "$WRITE" = 1 ] && hd_block
    exit 0
fi

if [ "$GCM_ONLY" = 1 ]; then
    for threads in 1 8; do
        d=$(run "$P11DERIVE" p11derive bench-aes256 gcm "$threads")
        s=$(run "$SOFTHSM" custody-root bench-aes256 gcm "$threads")
        row "AES-GCM encrypt 4 KiB" aes256 "$threads" "$d" "$s"
    done
    exit 0
fi

# The PostgreSQL store: the same provider and backing token, a config whose
# [store] url names a fresh database on the loopback server.
PG_STARTED=1
PG_ADMIN=$(bash tools/pg.sh start)
PG_HOSTPORT=${PG_ADMIN#*@}
PG_HOSTPORT=${PG_HOSTPORT%%/*}
pg_store() { # DATABASE ROOT_LABEL CLI CONFIG_OUT: a fresh database, a config naming it, init, the keys
    python3 - "$PG_ADMIN" "$1" <<'PY'
import subprocess, sys
admin, db = sys.argv[1], sys.argv[2]
sql = """DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'p11derive') THEN
CREATE ROLE p11derive LOGIN PASSWORD 'p11derive-test'; END IF; END $$;"""
for stmt in [sql, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db} OWNER p11derive"]:
    subprocess.run(["psql", "-q", admin, "-c", stmt], check=True, stdout=subprocess.DEVNULL)
PY
    local url="postgres://p11derive:p11derive-test@$PG_HOSTPORT/$1"
    # Its own root on the backing token: the rollback anchor belongs to one
    # root's chain, and this is another store.
    sed -e "s|^\[store\]|[store]\nurl = \"$url\"|" \
        -e "s|^root_label = .*|root_label = \"$2\"|" "$P11DERIVE_CONF" > "$4"
    grep -q "^root_label = \"$2\"" "$4" || sed -i "s|^\[backend\]|[backend]\nroot_label = \"$2\"|" "$4"
    P11DERIVE_CONF="$4" "$3" init >/dev/null
    for t in secp256k1 p256; do
        P11DERIVE_CONF="$4" "$3" asset create "bench-$t" --type "$t" >/dev/null
    done
}
pg_store p11derive_bench p11derive-bench-pg "$P11DERIVE_BIN" "$W/pg.toml"
# shellcheck source=tools/bench/hosts.sh
source tools/bench/hosts.sh
if [ "$HOSTS_ONLY" = 1 ]; then
    hosts_section
    [ "$WRITE" = 1 ] && write_block bench-hosts "$W/hosts-block.md"
    exit 0
fi
pgrows=()
pgrow() { # KEY THREADS SQLITE_LINE PG_LINE SOFTHSM_LINE
    local q=$3 p=$4 s=$5 ratio
    ratio=$(python3 -c "print(f'{$(field ops_per_s "$p") / max($(field ops_per_s "$s"), 1):.2f}')")
    pgrows+=("| $1 | $2 | $(field ops_per_s "$q") | $(field p50_us "$q") / $(field p99_us "$q") | $(field ops_per_s "$p") | $(field p50_us "$p") / $(field p99_us "$p") / $(field p999_us "$p") | $(field ops_per_s "$s") | **${ratio}×** | $(field fsyncs_per_1k "$p") | $(field pg_round_trips_per_1k "$p") |")
    echo "${pgrows[-1]}"
}
PG_HEADER="| key | threads | SQLite store ops/s | SQLite p50/p99 µs | PostgreSQL store ops/s | PostgreSQL p50/p99/p99.9 µs | SoftHSM ops/s | PostgreSQL / SoftHSM | commits /1k | PostgreSQL round trips /1k |"
echo "$PG_HEADER"
echo "|---|---|---|---|---|---|---|---|---|---|"
for kt in secp256k1 p256; do
    for threads in 1 8 32; do
        q=$(run "$P11DERIVE" p11derive "bench-$kt" sign "$threads")
        p=$(run "$P11DERIVE" p11derive "bench-$kt" sign "$threads" "$W/pg.toml")
        s=$(run "$SOFTHSM" custody-root "bench-$kt" sign "$threads")
        pgrow "$kt" "$threads" "$q" "$p" "$s"
    done
done
hosts_section
[ "$PG_ONLY" = 1 ] && exit 0

echo "| scenario | key | threads | p11derive ops/s | p11derive p50/p99/p99.9 µs | SoftHSM ops/s | SoftHSM p50/p99/p99.9 µs | ratio | derivations / anchor / other HSM calls per 1k | fsyncs /1k | peak RSS KiB (p11derive / SoftHSM) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for kt in secp256k1 p256; do
    for threads in 1 2 8 32; do
        d=$(run "$P11DERIVE" p11derive "bench-$kt" sign "$threads")
        s=$(run "$SOFTHSM" custody-root "bench-$kt" sign "$threads")
        row "warm sign" "$kt" "$threads" "$d" "$s"
    done
    d=$(run "$P11DERIVE" p11derive "bench-$kt" cold-sign 1 "$W/cold.toml")
    s=$(run "$SOFTHSM" custody-root "bench-$kt" cold-sign 1)
    row "cold sign (session, find, sign; p11derive derives each time)" "$kt" 1 "$d" "$s"
done
ed25519_rows
for threads in 1 8; do
    d=$(run "$P11DERIVE" p11derive bench-aes256 gcm "$threads")
    s=$(run "$SOFTHSM" custody-root bench-aes256 gcm "$threads")
    row "AES-GCM encrypt 4 KiB" aes256 "$threads" "$d" "$s"
    d=$(run "$P11DERIVE" p11derive bench-hmac-sha256 hmac "$threads")
    s=$(run "$SOFTHSM" custody-root bench-hmac-sha256 hmac "$threads")
    row "HMAC-SHA256 4 KiB" hmac-sha256 "$threads" "$d" "$s"
done

echo
hd_section

users_section

if [ "$WRITE" = 1 ]; then
    {
        echo "<!-- bench:begin (written by tools/bench.sh --write; the text after bench:end is kept) -->"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Machine: $(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
        echo "- p11derive $(git rev-parse --short HEAD 2>/dev/null || echo unknown), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null), ${SECONDS_EACH} s per measurement after 0.5 s of warm-up"
        echo
        echo "| scenario | key | threads | p11derive ops/s | p11derive p50/p99/p99.9 µs | SoftHSM ops/s | SoftHSM p50/p99/p99.9 µs | ratio | derivations / anchor / other HSM calls per 1k | fsyncs /1k | peak RSS KiB (p11derive / SoftHSM) |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
        echo
        echo "Derivations (PRF calls into the backing HSM), the backing HSM calls that moved the rollback"
        echo "anchor, all other backing HSM calls and the fsyncs, per 1000 operations, are p11derive's own"
        echo "(from its C_Finalize log line), counted over the whole run, warm-up and login included: a"
        echo "warm run derives once, at its first operation, and logs in once."
        echo
        echo "### The store on PostgreSQL"
        echo
        echo "Warm signing with the same provider and backing token, the store on SQLite and on PostgreSQL"
        echo "15 (Debian's, on loopback, default settings: synchronous_commit on), measured one after the other."
        echo "Commits and round trips are per 1000 operations, over the whole run."
        echo
        echo "$PG_HEADER"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        printf '%s\n' "${pgrows[@]}"
        echo
        echo "### Users mode"
        echo
        echo "Warm signing at 8 threads on the SQLite store, logged in as the backing token's user"
        echo "(pass-through) and as a signer in users mode with a policy on the key (mechanisms, and rate"
        echo "limits per asset and per user high enough never to refuse, counted at every commit),"
        echo "$REPS runs each, interleaved; the ratio is of the medians."
        echo
        echo "$USERS_HEADER"
        echo "|---|---|---|---|---|"
        printf '%s\n' "${usersrows[@]}"
        echo "<!-- bench:end -->"
    } > "$W/table.md"
    write_block bench "$W/table.md"
    write_block bench-hosts "$W/hosts-block.md"
    hd_block
fi
