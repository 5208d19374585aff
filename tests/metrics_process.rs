//! Issue 25: the provider's per-process metrics file, `[metrics] dir/p11derive-PID.prom`:
//! its counts after real operations (warm and cold), `promtool check metrics`, rewritten
//! every interval, removed at C_Finalize, absent when off, stale files of dead processes
//! removed, a forked child's own file, and a directory that cannot take the file never
//! failing the provider.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::Session;
use cryptoki::types::Ulong;

use common::metrics::{all_documented, documented, promtool_accepts};
use common::*;

const INTERVAL_MS: u64 = 100;

/// Adds `[metrics]` with `dir` and a short interval to the setup's config.
fn with_metrics(s: &Setup, dir: &Path) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{text}\n[metrics]\ndir = \"{}\"\ninterval_ms = {INTERVAL_MS}\n",
            dir.display()
        ),
    )
    .unwrap();
}

/// A setup with a metrics directory, configured; the directory.
fn metered() -> (Setup, PathBuf) {
    let s = setup(None);
    let dir = s.dir.join("metrics");
    std::fs::create_dir(&dir).unwrap();
    with_metrics(&s, &dir);
    (s, dir)
}

fn own_file(dir: &Path) -> PathBuf {
    dir.join(format!("p11derive-{}.prom", std::process::id()))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The labels of a sample line, as (name, value) pairs.
fn labels_of(inside: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = inside;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name, value));
        rest = &rest[end..];
    }
    out
}

/// The value of the sample `name` whose labels include `want`; `None` when
/// the file has none.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        let fits = n == name
            && want
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
        fits.then(|| value.parse().unwrap())
    })
}

/// A count the file must hold; an operation (and path) the process never
/// made writes no series, which counts 0.
fn count(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    match sample(text, name, want) {
        Some(n) => n as u64,
        None if name == "p11derive_operation_duration_seconds_count" => 0,
        None => panic!("no {name} {want:?} in:\n{text}"),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The file's text once it was written after `after` (Unix time).
fn written_after(file: &Path, after: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let at = sample(&text, "p11derive_metrics_written_timestamp_seconds", &[]);
        if at.is_some_and(|t| t > after) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} not written after {after} within 10 s: {text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gcm<'a>(iv: &'a mut [u8]) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, &[], Ulong::from(128)).unwrap())
}

fn sign(session: &Session, label: &str, n: usize) -> Vec<u8> {
    let key = private_key(session, label);
    let mut sig = Vec::new();
    for i in 0..n {
        sig = session
            .sign(&Mechanism::Ecdsa, key, &[i as u8; 32])
            .unwrap();
    }
    sig
}

#[test]
fn the_file_counts_what_the_process_did() {
    let _turn = turn();
    let (s, dir) = metered();
    s.create_asset("k", "secp256k1");
    s.create_asset("a", "aes256");
    let file = own_file(&dir);
    {
        let p = s.load();
        let session = p.user_session();
        // Three signatures: the first derives the key (cold), two from the cache.
        let sig = sign(&session, "k", 3);
        let public = find_one(&session, "k", ObjectClass::PUBLIC_KEY).unwrap();
        session
            .verify(&Mechanism::Ecdsa, public, &[2u8; 32], &sig)
            .unwrap();
        let aes = find_one(&session, "a", ObjectClass::SECRET_KEY).unwrap();
        let mut iv = [9u8; 12];
        let sealed = session.encrypt(&gcm(&mut iv), aes, b"metrics").unwrap();
        let plain = session.decrypt(&gcm(&mut iv), aes, &sealed).unwrap();
        assert_eq!(plain, b"metrics");
        let text = written_after(&file, unix_now());
        promtool_accepts(&text);
        // Every family the file declares is in the operator's guide, and
        // every family the guide lists for these files is written.
        all_documented(&text, "The per-process files");
        let written = metrics::declared(&text);
        for name in documented("The per-process files").keys() {
            assert!(
                written.contains_key(name),
                "{name} is documented but not written\n{text}"
            );
        }

        let pid = std::process::id().to_string();
        let who = [("pid", pid.as_str())];
        let ops = "p11derive_operation_duration_seconds_count";
        let op =
            |o: &str, path: &str| count(&text, ops, &[who[0], ("operation", o), ("path", path)]);
        assert_eq!((op("sign", "cold"), op("sign", "warm")), (1, 2), "{text}");
        assert_eq!((op("verify", "cold"), op("verify", "warm")), (0, 1));
        assert_eq!((op("encrypt", "cold"), op("encrypt", "warm")), (1, 0));
        assert_eq!((op("decrypt", "cold"), op("decrypt", "warm")), (0, 1));
        // Every sample names the process.
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.contains(&format!("pid=\"{pid}\""))
                    && line.contains(&format!("program=\"{}\"", comm.trim_end())),
                "{line}"
            );
        }
        // A warm operation took some time, and the time adds up.
        let sum = sample(
            &text,
            "p11derive_operation_duration_seconds_sum",
            &[("operation", "sign"), ("path", "warm")],
        )
        .unwrap();
        assert!(sum > 0.0 && sum < 10.0, "{sum}");
        assert_eq!(count(&text, "p11derive_key_cache_misses_total", &who), 2);
        assert_eq!(count(&text, "p11derive_key_cache_hits_total", &who), 3);
        assert!(count(&text, "p11derive_key_cache_keys", &who) >= 2);
        assert_eq!(count(&text, "p11derive_sessions", &who), 1);
        // Three signatures, an encryption and a decryption: five records
        // through the group commit.
        assert_eq!(count(&text, "p11derive_commit_batch_records_sum", &who), 5);
        let commits = count(&text, "p11derive_commit_duration_seconds_count", &who);
        assert!((1..=5).contains(&commits), "{commits}");
        let calls = "p11derive_backend_call_duration_seconds_count";
        assert!(count(&text, calls, &[("call", "prf")]) >= 2);
        assert!(count(&text, calls, &[("call", "login")]) >= 1);
        assert!(count(&text, "p11derive_arena_used_bytes", &who) > 0);
        assert_eq!(
            count(&text, "p11derive_arena_limit_bytes", &who),
            1024 * 1024
        );
        let started = sample(&text, "p11derive_process_start_time_seconds", &who).unwrap();
        assert!((unix_now() - started).abs() < 120.0, "{started}");

        // Rewritten every interval.
        let first = sample(&text, "p11derive_metrics_written_timestamp_seconds", &who).unwrap();
        let again = written_after(&file, first);
        let second = sample(&again, "p11derive_metrics_written_timestamp_seconds", &who).unwrap();
        assert!(
            second - first < 5.0 * INTERVAL_MS as f64 / 1000.0 + 1.0,
            "{first} {second}"
        );
        assert_eq!(
            names_in(&dir),
            [format!("p11derive-{pid}.prom")],
            "only the file, no temporary one"
        );
    }
    // C_Finalize (the provider dropped) removes it, and leaves nothing.
    assert!(
        !file.exists(),
        "{} still there after C_Finalize",
        file.display()
    );
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
}

#[test]
fn no_file_without_a_metrics_dir() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("k", "secp256k1");
    let mut seen = Vec::new();
    {
        let p = s.load();
        let session = p.user_session();
        sign(&session, "k", 2);
        std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
        let wanted = format!("p11derive-{}.prom", std::process::id());
        for entry in walk(&s.dir) {
            if entry.file_name().is_some_and(|n| n == wanted.as_str()) {
                seen.push(entry);
            }
        }
    }
    assert!(seen.is_empty(), "{seen:?}");
    assert!(!s.log().contains("metrics:"), "{}", s.log());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn a_dead_process_file_goes_at_start_a_live_one_stays() {
    let _turn = turn();
    let (s, dir) = metered();
    s.create_asset("k", "secp256k1");
    // A process that has ended: its pid is free (not reused this soon).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.join(format!("p11derive-{dead}.prom"));
    let stale_temp = dir.join(format!("p11derive-{dead}.prom.tmp"));
    // pid 1 lives (signal 0 to it is refused or allowed, never ESRCH).
    let live = dir.join("p11derive-1.prom");
    let other = dir.join("node.prom");
    for f in [&stale, &stale_temp, &live, &other] {
        std::fs::write(f, "# old\n").unwrap();
    }
    {
        let p = s.load();
        let session = p.user_session();
        sign(&session, "k", 1);
        assert!(
            !stale.exists() && !stale_temp.exists(),
            "{:?}",
            names_in(&dir)
        );
        assert!(live.exists() && other.exists());
        written_after(&own_file(&dir), 0.0);
    }
    assert!(s
        .log()
        .contains(&format!("process {dead} no longer exists")));
    assert_eq!(names_in(&dir), ["node.prom", "p11derive-1.prom"]);
}

#[test]
fn a_dir_that_cannot_take_the_file_fails_nothing() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("k", "secp256k1");
    // Missing, and a file where the directory should be (what a read-only
    // directory does for another user; these tests may run as root).
    let missing = s.dir.join("no-such-dir");
    let not_dir = s.dir.join("a-file");
    std::fs::write(&not_dir, "").unwrap();
    let original = std::fs::read_to_string(&s.config).unwrap();
    for (dir, why) in [
        (&missing, "does not exist"),
        (&not_dir, "is not a directory"),
    ] {
        std::fs::write(&s.config, &original).unwrap();
        with_metrics(&s, dir);
        let from = s.log().len();
        {
            let p = s.load();
            let session = p.user_session();
            sign(&session, "k", 2);
            std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
            sign(&session, "k", 1);
        }
        let log = s.log_since(from);
        let line = log
            .lines()
            .find(|l| l.contains("metrics: [metrics] dir"))
            .unwrap_or_else(|| panic!("no line about the metrics dir:\n{log}"));
        assert!(
            line.contains(&dir.display().to_string())
                && line.contains(why)
                && line.contains(&s.config.display().to_string()),
            "{line}"
        );
        // Said once, not at every interval.
        assert!(log.matches("metrics: cannot write").count() <= 1, "{log}");
    }
    assert!(!missing.exists());
}

#[test]
fn a_forked_child_writes_its_own_file() {
    let _turn = turn();
    let (s, dir) = metered();
    s.create_asset("k", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    sign(&session, "k", 2);
    let parent_file = own_file(&dir);
    written_after(&parent_file, 0.0);
    let out = s.dir.join("child.out");
    let child_dir = dir.clone();
    let pid = fork_child(&out, move || {
        let own = child_dir.join(format!("p11derive-{}.prom", std::process::id()));
        // The parent's thread did not come along: nothing writes the
        // child's file before its own C_Initialize.
        std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
        if own.exists() {
            return Err("the child has a file before C_Initialize".into());
        }
        let (ctx, session) = child_session()?;
        let key = find_one(&session, "k", ObjectClass::PRIVATE_KEY).ok_or("no key")?;
        session
            .sign(&Mechanism::Ecdsa, key, &[1u8; 32])
            .map_err(|e| e.to_string())?;
        let text = written_after(&own, unix_now());
        let signs: u64 = ["cold", "warm"]
            .iter()
            .map(|path| {
                count(
                    &text,
                    "p11derive_operation_duration_seconds_count",
                    &[("operation", "sign"), ("path", path)],
                )
            })
            .sum();
        drop(session);
        ctx.finalize().map_err(|e| e.to_string())?;
        if own.exists() {
            return Err("the child's file outlived its C_Finalize".into());
        }
        Ok(format!("signs {signs}\n"))
    });
    let said = reap(pid, &out, "the forked child");
    // Its own count (one signature), not the parent's two.
    assert_eq!(said, "signs 1\n");
    assert!(parent_file.exists());
    let text = written_after(&parent_file, unix_now());
    let warm = count(
        &text,
        "p11derive_operation_duration_seconds_count",
        &[("operation", "sign"), ("path", "warm")],
    );
    assert_eq!(warm, 1, "{text}");
}
