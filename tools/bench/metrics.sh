#!/usr/bin/env bash
# What the provider's per-process metrics cost on the warm path: warm signing
# (p11bench --op sign: C_SignInit + C_Sign, CKM_ECDSA over a 32-byte digest,
# secp256k1, audit durable) with [metrics] dir unset and set (interval_ms =
# 1000, five times the default's writes), at 1 and 16 threads, the two
# interleaved, --reps runs each, medians (docs/benchmarks.md, "Per-process
# metrics: cost on the warm path").
#
#   bash tools/bench/metrics.sh [--seconds S] [--reps N]
#
# Each run is one p11bench process: 0.5 s of warm-up, then S seconds (default
# 3). A run with metrics on checks, while it runs, that its file exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=3
REPS=3
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        *) echo "usage: bash tools/bench/metrics.sh [--seconds S] [--reps N]" >&2; exit 2 ;;
    esac
done
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
OUT=$(realpath "${CARGO_TARGET_DIR:-target}")/release
export P11DERIVE_BIN="$OUT/p11derive"
BENCH="$OUT/p11bench"
# shellcheck source=tools/softhsm-env.sh
source tools/softhsm-env.sh >/dev/null
trap 'rm -rf "$P11DERIVE_WORK"' EXIT
W=$P11DERIVE_WORK
printf '%s' "$P11DERIVE_PIN" > "$W/pin"
"$P11DERIVE_BIN" asset create bench-secp256k1 --type secp256k1 >/dev/null
mkdir "$W/metrics"
ON="$W/on.toml"
cp "$P11DERIVE_CONF" "$ON"
printf '\n[metrics]\ndir = "%s"\ninterval_ms = 1000\n' "$W/metrics" >> "$ON"

run() { # CONF THREADS
    P11DERIVE_CONF=$1 "$BENCH" --module "$OUT/libp11derive.so" --token p11derive \
        --key bench-secp256k1 --op sign --threads "$2" --seconds "$SECONDS_EACH" --pin-file "$W/pin"
}
# With metrics on: the file must be there while the run goes on.
run_on() { # THREADS
    run "$ON" "$1" > "$W/on.out" &
    local pid=$!
    sleep 1.5
    if ! ls "$W"/metrics/p11derive-*.prom >/dev/null 2>&1; then
        echo "metrics.sh: no metrics file in $W/metrics during a run with metrics on" >&2
        wait "$pid" || true
        exit 1
    fi
    wait "$pid"
    cat "$W/on.out"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
median() { python3 -c "import statistics,sys; print(int(statistics.median(float(x) for x in sys.argv[1:])))" "$@"; }

echo "| threads | metrics off: ops/s (runs) | metrics on: ops/s (runs) | on / off (medians) | p50 / p99 µs off | p50 / p99 µs on |"
echo "|---|---|---|---|---|---|"
for threads in 1 16; do
    off=() on=() offp50=() offp99=() onp50=() onp99=()
    for _ in $(seq "$REPS"); do
        d=$(run "$P11DERIVE_CONF" "$threads")
        off+=("$(field ops_per_s "$d")"); offp50+=("$(field p50_us "$d")"); offp99+=("$(field p99_us "$d")")
        d=$(run_on "$threads")
        on+=("$(field ops_per_s "$d")"); onp50+=("$(field p50_us "$d")"); onp99+=("$(field p99_us "$d")")
    done
    mo=$(median "${off[@]}"); mn=$(median "${on[@]}")
    echo "| $threads | $mo (${off[*]}) | $mn (${on[*]}) | **$(python3 -c "print(f'{$mn / max($mo, 1):.3f}')")×** | $(median "${offp50[@]}") / $(median "${offp99[@]}") | $(median "${onp50[@]}") / $(median "${onp99[@]}") |"
done
if ls "$W"/metrics/* >/dev/null 2>&1; then
    echo "metrics.sh: files left in $W/metrics after C_Finalize: $(ls "$W/metrics")" >&2
    exit 1
fi
