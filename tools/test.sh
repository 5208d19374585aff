#!/usr/bin/env bash
# The whole test suite, from nothing: install what is missing, check format and
# lints, run the Rust tests (unit and integration, against SoftHSM), the
# conformance run with programs no one here wrote, then the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --release --all-targets --quiet -- -D warnings
echo "== cargo test (release; integration tests load the libp11derive.so this build produced)"
# tests/postgres.rs and tests/pg_conn.rs start their PostgreSQL servers and a PgBouncer
# (tools/pg.sh); stop them whatever happens.
trap 'bash tools/pg.sh stop; bash tools/pg.sh bouncer-stop 55436
      for p in 55433 55434 55435; do P11DERIVE_PG_PORT=$p bash tools/pg.sh stop; done' EXIT
cargo test --release
echo "== fuzz (bounded, 20 s per target)"
bash tools/fuzz.sh 20
echo "== conformance"
bash conformance/run.sh
echo "== sanitizers (AddressSanitizer over the C ABI, ThreadSanitizer over the concurrency tests)"
bash tools/sanitize.sh all
