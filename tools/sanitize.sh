#!/usr/bin/env bash
# The provider under sanitizers: AddressSanitizer over the C ABI
# tests (every entry point, null pointers, short buffers, fork, the faults),
# ThreadSanitizer over the concurrency tests. Stable Rust with
# RUSTC_BOOTSTRAP=1 for -Zsanitizer, and the standard library rebuilt with
# it (-Zbuild-std, needs the rust-src component). Each sanitizer builds into
# its own target directory (target/asan, target/tsan); the first build takes
# several minutes.
#
#   bash tools/sanitize.sh [asan|tsan|all]
#
# The test executables export their symbols (--export-dynamic) so that the
# sanitizer runtime they carry also serves libp11derive.so, which the tests
# load with dlopen. SoftHSM, OpenSSL and SQLite's C code are not
# instrumented: ASan checks our Rust (and the memory it hands them), TSan
# sees their locks through the pthread interceptors.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
bash tools/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src
fi
target=$(rustc -vV | sed -n 's/^host: //p')

run() { # NAME RUSTFLAG TESTS...
    local name=$1 flag=$2
    shift 2
    local tests=()
    for t in "$@"; do tests+=(--test "$t"); done
    echo "== $name: ${*}"
    export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="target/$name" \
        RUSTFLAGS="-Zsanitizer=$flag -Clink-arg=-Wl,--export-dynamic"
    # The fault shim (an example) is built by a plain `cargo test` only.
    cargo build -Zbuild-std --target "$target" --release --example faultshim
    cargo test -Zbuild-std --target "$target" --release "${tests[@]}"
    unset RUSTC_BOOTSTRAP CARGO_TARGET_DIR RUSTFLAGS
}

if [ "$which" = asan ] || [ "$which" = all ]; then
    # ODR reports: SQLite's globals are seen twice through the Rust/C link;
    # leaks: modules and tables kept for the life of the process on purpose.
    ASAN_OPTIONS=detect_odr_violation=0:detect_leaks=0:abort_on_error=1 \
        run asan address abi faults secret
fi
if [ "$which" = tsan ] || [ "$which" = all ]; then
    TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tools/tsan.supp" \
        run tsan thread stress faults
fi
echo "sanitizers: clean"
