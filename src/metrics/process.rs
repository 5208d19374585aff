//! The provider's per-process metrics: the lock-free counters and histograms the hot paths add to, and their text (`[metrics] dir/p11derive-PID.prom`, written by `writer.rs`).
//!
//! Everything a hot path touches is a static atomic: one `AtomicU64` per
//! histogram bucket, the sum in nanoseconds (or records), counters. Each
//! entry point first reads [`enabled`] (one relaxed load); off, nothing else
//! happens: no clock is read, nothing is counted. On, an operation costs a
//! few clock reads (the vDSO's `clock_gettime`) and three relaxed atomic
//! additions, with no lock and no allocation. Only the backing HSM's errors
//! (rare, and each already a failed call) go into a map behind a mutex.
//!
//! The operation histogram counts the time the provider spends on one
//! operation: its `C_*Init`, each `C_*Update` and the call that gives its
//! result, each from the start of the entry point ([`call_begins`], in the
//! abi's `with_provider`) to its end, without the caller's time between the
//! calls. An operation is "cold" when its init derived a key through the
//! backing HSM (the key cache had none), "warm" otherwise.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use super::text::{Exposition, Format, Kind};
use crate::process::PerProcess;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process keeps metrics (`[metrics] dir` is set and the
/// provider is initialized): one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

pub(super) fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// Upper bounds of the seconds histograms (METRICS.md), in nanoseconds.
const SECONDS_LE: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Upper bounds of the records-per-commit histogram.
const BATCH_LE: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Bucket slots: the bounds above (at most 17) and +Inf.
const SLOTS: usize = 18;

/// A histogram of atomics, on cache lines of its own (threads that add to
/// one histogram do not slow down those adding to the next).
#[repr(align(64))]
pub struct Histogram {
    /// Upper bounds, in the unit observations come in.
    le: &'static [u64],
    /// Units in one exposed unit (1e9: nanoseconds in a second).
    per: f64,
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; SLOTS],
    sum: AtomicU64,
}

impl Histogram {
    const fn new(le: &'static [u64], per: f64) -> Histogram {
        Histogram {
            le,
            per,
            buckets: [const { AtomicU64::new(0) }; SLOTS],
            sum: AtomicU64::new(0),
        }
    }

    const fn seconds() -> Histogram {
        Histogram::new(&SECONDS_LE, 1e9)
    }

    /// Adds one observation of `v` units: two relaxed additions.
    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self.le.partition_point(|&le| le < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.sum.store(0, Relaxed);
    }

    /// (cumulative bucket counts by upper bound, sum, count), as read now.
    fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(self.le.len());
        for (i, le) in self.le.iter().enumerate() {
            total += self.buckets[i].load(Relaxed);
            cumulative.push((*le as f64 / self.per, total));
        }
        total += self.buckets[self.le.len()].load(Relaxed);
        let sum = self.sum.load(Relaxed) as f64 / self.per;
        (cumulative, sum, total)
    }

    fn count(&self) -> u64 {
        self.buckets[..=self.le.len()]
            .iter()
            .map(|b| b.load(Relaxed))
            .sum()
    }
}

/// A counter on a cache line of its own.
#[repr(align(64))]
struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
}

/// The operations whose time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sign = 0,
    Verify = 1,
    Encrypt = 2,
    Decrypt = 3,
}

impl Operation {
    const ALL: [Operation; 4] = [
        Operation::Sign,
        Operation::Verify,
        Operation::Encrypt,
        Operation::Decrypt,
    ];

    fn name(self) -> &'static str {
        match self {
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
        }
    }

    /// Encryption or decryption.
    pub fn crypt(encrypting: bool) -> Operation {
        if encrypting {
            Operation::Encrypt
        } else {
            Operation::Decrypt
        }
    }
}

/// By operation, then warm (0) and cold (1).
static OPERATIONS: [[Histogram; 2]; 4] = [const { [const { Histogram::seconds() }; 2] }; 4];
static COMMIT_BATCH: Histogram = Histogram::new(&BATCH_LE, 1.0);
static COMMIT_DURATION: Histogram = Histogram::seconds();
static CACHE_HITS: Counter = Counter::new();
static CACHE_MISSES: Counter = Counter::new();

/// The backing HSM calls by label: the `what` each backend call names
/// (`backend/mod.rs`), and the label it has here. A call not listed is
/// `other`.
const CALLS: [(&str, &str); 13] = [
    ("the PRF (C_Sign under the root)", "prf"),
    ("C_GenerateRandom", "rng"),
    ("C_Login", "login"),
    ("C_Logout", "logout"),
    ("reading the rollback anchor", "anchor_read"),
    ("writing the rollback anchor", "anchor_write"),
    ("C_GetTokenInfo", "token_info"),
    ("C_SeedRandom", "seed_random"),
    ("C_GenerateKey (root)", "root_generate"),
    ("C_CreateObject (root)", "root_import"),
    ("C_DestroyObject (root)", "root_destroy"),
    ("C_FindObjects (root)", "root_find"),
    ("C_Finalize", "finalize"),
];
static BACKEND: [Histogram; CALLS.len() + 1] = [const { Histogram::seconds() }; CALLS.len() + 1];
/// Failed backing calls by (call index, result): rare, so a map.
static BACKEND_ERRORS: PerProcess<Mutex<BTreeMap<(usize, &'static str), u64>>> =
    PerProcess::new(|| Mutex::new(BTreeMap::new()));

fn call_index(what: &str) -> usize {
    CALLS
        .iter()
        .position(|(w, _)| *w == what)
        .unwrap_or(CALLS.len())
}

fn call_label(i: usize) -> &'static str {
    CALLS.get(i).map_or("other", |(_, l)| l)
}

thread_local! {
    /// When the provider call running on this thread began (`None`: metrics
    /// off, or no provider call).
    static CALL: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether the call running on this thread derived a key through the
    /// backing HSM (a key-cache miss).
    static DERIVED: Cell<bool> = const { Cell::new(false) };
}

/// An entry point that needs the provider begins (the abi's
/// `with_provider`): the start of the time its operation is charged.
#[inline]
pub fn call_begins() {
    if enabled() {
        CALL.set(Some(Instant::now()));
        DERIVED.set(false);
    }
}

/// A key looked up in the key cache: found (`hit`), or derived through the
/// backing HSM.
#[inline]
pub fn key_lookup(hit: bool) {
    if enabled() {
        if hit {
            CACHE_HITS.0.fetch_add(1, Relaxed);
        } else {
            CACHE_MISSES.0.fetch_add(1, Relaxed);
            DERIVED.set(true);
        }
    }
}

/// The provider's time on one operation so far (kept in the operation):
/// the sum of its calls' times, each call measured from its start to the
/// latest point the operation saw of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpClock {
    /// Nanoseconds in the operation's calls before `call`.
    before: u64,
    /// Nanoseconds of `call`, as last measured.
    last: u64,
    /// When the last call measured began.
    call: Option<Instant>,
    cold: bool,
    /// Timed at all (metrics on, begun inside a provider call).
    on: bool,
}

impl OpClock {
    /// The operation is made (in its `C_*Init`, or in the call of a
    /// message): the call's time so far, and whether it derived its key.
    #[inline]
    pub fn begin() -> OpClock {
        if !enabled() {
            return OpClock::default();
        }
        let mut clock = OpClock {
            cold: DERIVED.get(),
            on: CALL.get().is_some(),
            ..OpClock::default()
        };
        clock.measure();
        clock
    }

    /// A `C_*Update` call of the operation ends: its time is added.
    #[inline]
    pub fn part(&mut self) {
        if self.on {
            self.measure();
        }
    }

    /// The call that gives the result: the operation is counted, with the
    /// time so far, when the returned guard is dropped (the call's end,
    /// whichever way it returns).
    #[inline]
    pub fn finishing(&self, op: Operation) -> Finishing {
        Finishing { clock: *self, op }
    }

    fn measure(&mut self) {
        if let Some(start) = CALL.get() {
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.advance(start, ns);
        }
    }

    /// The call that began at `call` has taken `ns` so far: a call measured
    /// before is measured again, not counted twice.
    fn advance(&mut self, call: Instant, ns: u64) {
        if self.call != Some(call) {
            self.before = self.before.saturating_add(self.last);
            self.call = Some(call);
        }
        self.last = ns;
    }

    fn total(&self) -> u64 {
        self.before.saturating_add(self.last)
    }
}

/// Counts an operation when dropped (see [`OpClock::finishing`]).
pub struct Finishing {
    clock: OpClock,
    op: Operation,
}

impl Drop for Finishing {
    #[inline]
    fn drop(&mut self) {
        if self.clock.on {
            self.clock.measure();
            let total = self.clock.total();
            OPERATIONS[self.op as usize][usize::from(self.clock.cold)].observe(total);
        }
    }
}

/// A stopwatch that reads the clock only when metrics are on.
pub struct Timer(Option<Instant>);

impl Timer {
    #[inline]
    pub fn start() -> Timer {
        Timer(enabled().then(Instant::now))
    }

    fn nanos(&self) -> Option<u64> {
        self.0
            .map(|t| u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// One group commit of `records` records, timed by `timer`.
#[inline]
pub fn commit(timer: Timer, records: usize) {
    if let Some(ns) = timer.nanos() {
        COMMIT_DURATION.observe(ns);
        COMMIT_BATCH.observe(records as u64);
    }
}

/// One call into the backing HSM, `what` as the backend names it, begun at
/// `since`; `failed`: its CKR name, or `timeout`.
pub fn backend_call(what: &str, since: Instant, failed: Option<&'static str>) {
    if !enabled() {
        return;
    }
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let i = call_index(what);
    BACKEND[i].observe(ns);
    if let Some(result) = failed {
        let mut errors = BACKEND_ERRORS
            .get()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *errors.entry((i, result)).or_insert(0) += 1;
    }
}

/// Every count back to zero (a new `C_Initialize`: a forked child must not
/// report its parent's operations as its own).
pub(super) fn reset() {
    for by_path in &OPERATIONS {
        for h in by_path {
            h.reset();
        }
    }
    COMMIT_BATCH.reset();
    COMMIT_DURATION.reset();
    for h in &BACKEND {
        h.reset();
    }
    CACHE_HITS.0.store(0, Relaxed);
    CACHE_MISSES.0.store(0, Relaxed);
    BACKEND_ERRORS
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// What the provider tells the writer at each write.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderGauges {
    /// Keys in the key cache.
    pub keys: u64,
    /// Open sessions.
    pub sessions: u64,
}

/// What a file says besides the counters: who, when, and the gauges.
pub(super) struct Snapshot<'a> {
    pub pid: &'a str,
    pub program: &'a str,
    pub started: f64,
    pub now: f64,
    pub provider: Option<ProviderGauges>,
    pub arena_used: u64,
    pub arena_limit: u64,
}

/// The file's text: Prometheus text 0.0.4.
pub(super) fn render(s: &Snapshot) -> String {
    let mut e = Exposition::new(Format::Prometheus);
    let who = [("pid", s.pid), ("program", s.program)];
    e.family(
        "p11derive_operation_duration_seconds",
        Kind::Histogram,
        "Time inside the provider for one operation, from its Init to its result (the caller's \
         time between calls not counted); cold when its Init derived the key through the backing \
         HSM.",
    );
    for op in Operation::ALL {
        for (path, h) in ["warm", "cold"].iter().zip(&OPERATIONS[op as usize]) {
            // An operation the process never made writes no series: each
            // would be 20 lines per process for nothing.
            let (buckets, sum, count) = h.snapshot();
            if count == 0 {
                continue;
            }
            let labels = [who[0], who[1], ("operation", op.name()), ("path", path)];
            e.histogram(&labels, &buckets, sum, count);
        }
    }
    e.family(
        "p11derive_commit_batch_records",
        Kind::Histogram,
        "Records per group commit.",
    );
    let (buckets, sum, count) = COMMIT_BATCH.snapshot();
    e.histogram(&who, &buckets, sum, count);
    e.family(
        "p11derive_commit_duration_seconds",
        Kind::Histogram,
        "One group commit's transaction, its fsync included.",
    );
    let (buckets, sum, count) = COMMIT_DURATION.snapshot();
    e.histogram(&who, &buckets, sum, count);
    e.family(
        "p11derive_backend_call_duration_seconds",
        Kind::Histogram,
        "Calls into the backing HSM, by call.",
    );
    for (i, h) in BACKEND.iter().enumerate() {
        if h.count() == 0 {
            continue;
        }
        let (buckets, sum, count) = h.snapshot();
        e.histogram(
            &[who[0], who[1], ("call", call_label(i))],
            &buckets,
            sum,
            count,
        );
    }
    e.family(
        "p11derive_backend_call_errors_total",
        Kind::Counter,
        "Failed calls into the backing HSM, by call and result (CKR name, or timeout).",
    );
    let errors = BACKEND_ERRORS
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for ((i, result), n) in errors {
        let labels = [who[0], who[1], ("call", call_label(i)), ("result", result)];
        e.sample(&labels, n as f64);
    }
    let counters = [
        (
            "p11derive_key_cache_hits_total",
            "Key lookups served from the key cache.",
            CACHE_HITS.0.load(Relaxed),
        ),
        (
            "p11derive_key_cache_misses_total",
            "Key lookups that derived the key through the backing HSM.",
            CACHE_MISSES.0.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help);
        e.sample(&who, value as f64);
    }
    let mut gauges = Vec::new();
    if let Some(p) = s.provider {
        gauges.push((
            "p11derive_key_cache_keys",
            "Keys in the key cache now.",
            p.keys as f64,
        ));
        gauges.push(("p11derive_sessions", "Open sessions.", p.sessions as f64));
    }
    gauges.extend([
        (
            "p11derive_arena_used_bytes",
            "Locked memory for secrets in use.",
            s.arena_used as f64,
        ),
        (
            "p11derive_arena_limit_bytes",
            "Size of the locked memory for secrets ([memory] locked_kib).",
            s.arena_limit as f64,
        ),
        (
            "p11derive_process_start_time_seconds",
            "When C_Initialize ran (Unix time).",
            s.started,
        ),
        (
            "p11derive_metrics_written_timestamp_seconds",
            "When this file was written (Unix time).",
            s.now,
        ),
    ]);
    for (name, help, value) in gauges {
        e.family(name, Kind::Gauge, help);
        e.sample(&who, value);
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_add_up() {
        let h = Histogram::seconds();
        h.observe(40_000); // 40 µs: le 0.00005
        h.observe(50_000); // on the bound: le 0.00005
        h.observe(60_000); // le 0.0001
        h.observe(20_000_000_000); // past 10 s: +Inf only
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(buckets.len(), 17);
        assert_eq!(buckets[0], (0.00005, 2));
        assert_eq!(buckets[1], (0.0001, 3));
        assert_eq!(buckets[16], (10.0, 3));
        assert_eq!(count, 4);
        assert!((sum - 20.00015).abs() < 1e-9, "{sum}");
        let b = Histogram::new(&BATCH_LE, 1.0);
        b.observe(3);
        b.observe(300);
        let (buckets, sum, count) = b.snapshot();
        assert_eq!(buckets[1], (2.0, 0));
        assert_eq!(buckets[2], (4.0, 1));
        assert_eq!((sum, count), (303.0, 2));
    }

    #[test]
    fn backend_calls_are_named_by_label() {
        assert_eq!(call_label(call_index("C_GenerateRandom")), "rng");
        assert_eq!(
            call_label(call_index("the PRF (C_Sign under the root)")),
            "prf"
        );
        assert_eq!(call_label(call_index("something new")), "other");
    }

    /// What the instrumentation of one warm signature costs by itself (the
    /// two entry points, the key lookup, the clock and the histogram), off
    /// and on: `cargo test --release --lib metrics::process::tests::cost --
    /// --ignored --nocapture` (docs/benchmarks.md). Ignored: it switches the
    /// process's metrics on.
    #[test]
    #[ignore]
    fn cost_of_one_warm_signature() {
        const N: u32 = 2_000_000;
        let one = || {
            call_begins(); // C_SignInit
            key_lookup(true);
            let clock = OpClock::begin();
            call_begins(); // C_Sign
            drop(std::hint::black_box(clock).finishing(Operation::Sign));
        };
        for on in [false, true, false, true] {
            set_enabled(on);
            let t = Instant::now();
            for _ in 0..N {
                one();
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
            eprintln!(
                "metrics {}: {ns:.1} ns per signature",
                if on { "on" } else { "off" }
            );
        }
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(Instant::now());
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
        eprintln!("one clock read (Instant::now): {ns:.1} ns");
        set_enabled(false);
        reset();
    }

    #[test]
    fn an_operation_adds_its_calls_and_counts_each_call_once() {
        let init = Instant::now();
        let sign = init + std::time::Duration::from_micros(1);
        let mut clock = OpClock::default();
        // Made 100 ns into its init, which ended at 150 ns.
        clock.advance(init, 100);
        clock.advance(init, 150);
        assert_eq!(clock.total(), 150);
        // The call that ends it: 40 ns.
        clock.advance(sign, 30);
        clock.advance(sign, 40);
        assert_eq!(clock.total(), 190);
    }

    #[test]
    fn an_operation_outside_a_timed_call_is_not_counted() {
        // No `call_begins` on this thread: the clock stays off.
        let clock = OpClock::begin();
        assert!(!clock.on);
    }
}
