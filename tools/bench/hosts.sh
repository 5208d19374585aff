# The multi-host scenarios of tools/bench.sh, sourced by it after
# the PostgreSQL store ($W/pg.toml) is made: several provider processes
# ("hosts"), each with its own config and log, sign warm secp256k1 at once
# on one PostgreSQL store, on loopback and through tools/netdelay.rs (one
# delaying proxy per process: each host its own link to the database). With
# --baseline-so, another build does the same on a database of its own,
# interleaved run by run. Each scenario is run --reps times; the tables are
# the medians (tools/bench/hosts.py).

# Every process is started before its measured interval begins: this much
# after the first is started (C_Initialize, login, and the warm-up before).
HOSTS_LEAD_MS=${HOSTS_LEAD_MS:-2500}
PROXY_PORT=()

start_proxies() { # N: one delaying proxy a host, in front of the server
    local h
    for ((h = 1; h <= $1; h++)); do
        "$NETDELAY" --to "$PG_HOSTPORT" --delay-ms "$DELAY_MS" > "$W/proxy-$h.out" &
        PROXY_PIDS+=($!)
        for _ in $(seq 50); do
            [ -s "$W/proxy-$h.out" ] && break
            sleep 0.1
        done
        PROXY_PORT[h]=$(sed -n 's/^listening .*:\([0-9]*\)$/\1/p' "$W/proxy-$h.out")
        [ -n "${PROXY_PORT[h]}" ] || { echo "bench.sh: p11netdelay did not start (see above)" >&2; exit 1; }
    done
}

multi() { # MODULE CONFIG PROCESSES THREADS NET: one line, the run's sums
    # SoftHSM's file store, shared by every "host" here, now and then fails
    # a process's C_Login or C_GetTokenInfo with CKR_GENERAL_ERROR while
    # another process rewrites the token (the rollback anchor's moves): such
    # a run is run again, at most twice, and counted in the table's header.
    local attempt
    for attempt in 1 2 3; do
        if multi_once "$@"; then return 0; fi
        echo "bench.sh: a provider process failed (attempt $attempt of 3; the ends of the logs above)" >&2
        echo retry >> "$W/hosts.retries"
    done
    exit 1
}

multi_once() {
    local start h pids=() c log failed=0
    start=$(( $(date +%s%3N) + HOSTS_LEAD_MS ))
    for ((h = 1; h <= $3; h++)); do
        c="$W/multi-$h.toml" log="$W/multi-$h.log"
        sed "s|^file = .*|file = \"$log\"|" "$2" > "$c"
        if [ "$5" = delay ]; then
            sed -i "s|@$PG_HOSTPORT/|@127.0.0.1:${PROXY_PORT[h]}/|" "$c"
            grep -q "@127.0.0.1:${PROXY_PORT[h]}/" "$c" || { echo "bench.sh: $c does not name the proxy" >&2; exit 1; }
        fi
        rm -f "$log"
        P11DERIVE_CONF=$c "$BENCH" --module "$1" --token p11derive --key bench-secp256k1 --op sign \
            --threads "$4" --seconds "$SECONDS_EACH" --pin-file "$W/pin" --stats-log "$log" \
            --start-at "$start" > "$W/multi-$h.out" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    if [ "$failed" = 1 ]; then
        for ((h = 1; h <= $3; h++)); do
            echo "bench.sh: process $h of $3 ($1), the end of its log:" >&2
            tail -5 "$W/multi-$h.log" >&2 || true
        done
        return 1
    fi
    python3 tools/bench/hosts.py run $(for ((h = 1; h <= $3; h++)); do echo "$W/multi-$h.out"; done)
}

hosts_section() {
    local results="$W/hosts.results" rep net layout n threads build so c line order
    local builds=(new)
    : > "$results"
    : > "$W/hosts.retries"
    if [ -n "$BASE_SO" ]; then
        pg_store p11derive_bench_base p11derive-bench-base "$BASE_BIN" "$W/base.toml"
        builds+=(base)
    fi
    start_proxies 4
    echo "multi-host scenarios: ${REPS} repetitions of 2 networks × 3 layouts × ${#builds[@]} builds, ${SECONDS_EACH} s each"
    for ((rep = 1; rep <= REPS; rep++)); do
        for net in loopback delay; do
            for layout in 1x16 2x8 4x4; do
                n=${layout%x*} threads=${layout#*x}
                # Which build goes first alternates from one repetition to the next.
                order=("${builds[@]}")
                if [ $((rep % 2)) = 0 ] && [ ${#builds[@]} = 2 ]; then order=(base new); fi
                for build in "${order[@]}"; do
                    if [ "$build" = new ]; then so=$P11DERIVE c=$W/pg.toml; else so=$BASE_SO c=$W/base.toml; fi
                    line=$(multi "$so" "$c" "$n" "$threads" "$net")
                    echo "net=$net layout=$layout build=$build rep=$rep $line" | tee -a "$results"
                done
            done
        done
    done
    {
        echo "<!-- bench-hosts:begin (written by tools/bench.sh --write or --hosts-only --write) -->"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Machine: $(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); PostgreSQL $(psql -V | awk '{print $3}') on the same cores"
        echo "- This build: p11derive $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes to src/)')"
        if [ -n "$BASE_SO" ]; then
            echo "- Baseline: \`$BASE_SO\` (its own database); in every scenario and repetition the two builds run back to back, which goes first alternating"
        else
            echo "- No baseline (run without --baseline-so)"
        fi
        echo "- Runs repeated because a provider process failed (SoftHSM's shared file token, see below): $(wc -l < "$W/hosts.retries")"
        echo "- Warm secp256k1 signing, ${SECONDS_EACH} s measured, the same interval in every process (p11bench --start-at), after at least 0.5 s of warm-up"
        echo
        python3 tools/bench/hosts.py table "$results" "$DELAY_MS"
        echo "<!-- bench-hosts:end -->"
    } > "$W/hosts-block.md"
    sed -n '/^\*\*/,/^<!-- bench-hosts:end/p' "$W/hosts-block.md"
}

write_block() { # MARK FILE: replaces docs/benchmarks.md's block <!-- MARK:begin ... MARK:end -->
    python3 - "$1" "$2" docs/benchmarks.md <<'PY'
import sys
mark, block, path = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = open(path).read()
begin, end = f"<!-- {mark}:begin", f"<!-- {mark}:end -->\n"
if begin not in text or end not in text:
    sys.exit(f"bench.sh: {path} has no {begin} ... {end.strip()} markers: put them where the table goes")
start = text.index(begin)
stop = text.index(end) + len(end)
open(path, "w").write(text[:start] + block + text[stop:])
PY
    echo "written: docs/benchmarks.md ($1)"
}
