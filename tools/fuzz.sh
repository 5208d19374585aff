#!/usr/bin/env bash
# A bounded fuzz run: builds the cargo-fuzz targets in fuzz/ and runs each for
# SECONDS (default 20), seeded with the committed corpus (fuzz/corpus/<target>/).
# New corpus entries go to a temporary directory, so the run leaves the
# repository clean. Exits non-zero if any target crashed, panicked, leaked or
# hung; each failing input is kept in fuzz/artifacts/<target>/ and the command
# that reproduces it is printed.
#
#   bash tools/fuzz.sh [SECONDS]
#
# cargo fuzz needs nightly flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1. Targets are built optimized with debug assertions and
# overflow checks, under AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: tools/fuzz.sh [SECONDS]" >&2
    exit 2
    ;;
esac

bash tools/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=(config store_open abi p256_diff)
# Per-target libFuzzer flags. abi: the provider keeps state between inputs
# (sessions, caches, handle tables), so most inputs end with more
# allocations than frees and LeakSanitizer would scan the whole heap after
# each of them (half the run's time, measured); its leaks are not checked.
declare -A flags=([abi]="-detect_leaks=0")
export RUSTC_BOOTSTRAP=1
start=$(date +%s)
echo "== building the fuzz targets"
cargo fuzz build -O -a
built=$(date +%s)
bin_dir="fuzz/target/x86_64-unknown-linux-gnu/release"

# Scratch space (stores, the SoftHSM token) on tmpfs when there is one: the
# store fsyncs every commit.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base="${TMPDIR:-/tmp}"
work=$(mktemp -d "$base/p11derive-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export P11DERIVE_FUZZ_SCRATCH="$work/scratch"
mkdir -p "$P11DERIVE_FUZZ_SCRATCH"
# SQLite's amalgamation has two file-local arrays of one name, which
# AddressSanitizer's ODR check takes for one global defined twice.
export ASAN_OPTIONS="detect_odr_violation=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

failed=()
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s"
    corpus="$work/corpus-$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    log="$work/$t.log"
    # The outer timeout only guards against libFuzzer itself hanging; a slow
    # input is caught by -timeout and reported like a crash.
    status=0
    timeout --kill-after=30 $((seconds + 600)) "$bin_dir/$t" \
        -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" ${flags[$t]:-} \
        "$corpus" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    echo "fuzz $t: ${runs:-?} runs, ${rate:-?} exec/s, $(find "$corpus" -type f | wc -l) new corpus entries"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        grep -v '^"' "$log" | tail -60
        input=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -1)
        echo "FAIL fuzz $t (exit $status)"
        if [ -n "$input" ]; then
            echo "  failing input: $input"
            echo "  reproduce: ASAN_OPTIONS=detect_odr_violation=0 $bin_dir/$t ${flags[$t]:-} $input"
            echo "         or: RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a $t $input"
        fi
    fi
done

echo "fuzz: built in $((built - start))s, whole run $(($(date +%s) - start))s"
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
