//! Hardened edges, attacked through the built provider and CLI: PIN guessing
//! meets a growing delay, and the files p11derive creates are not readable by
//! other users.

mod common;

use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::*;

/// The delay p11derive documents for the nth failed login in a row
/// (README, "Failed logins"): none for the first, then 100 ms doubling to 5 s.
fn documented_delay(n: u32) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100 << (n - 2).min(6)).min(Duration::from_secs(5)),
    }
}

const WRONG: &str = "000000";

/// A PIN-guessing loop through the built .so: the nth wrong PIN in a row
/// takes at least the documented delay, guesses from several threads queue
/// behind each other's delay instead of running beside it, each delay is
/// logged (never the PIN), each failure is still audited, and the right PIN
/// afterwards logs in and starts the count again.
#[test]
fn wrong_pins_wait_longer_each_time_until_a_right_one() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.session();
    // The count is per process: start from a successful login.
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    session.logout().unwrap();
    let start_of_log = s.log().len();
    let wrong = AuthPin::from(WRONG);
    let guess = |session: &cryptoki::session::Session| {
        let t = Instant::now();
        let rv = rv_of(session.login(UserType::User, Some(&wrong)));
        let took = t.elapsed();
        eprintln!("a wrong PIN answered after {took:?}");
        (rv, took)
    };

    // Failures 1 and 2, one after the other.
    for n in 1..=2 {
        let (rv, took) = guess(&session);
        assert_eq!(rv, RvError::PinIncorrect);
        assert!(took >= documented_delay(n), "failure {n} took {took:?}");
    }
    // Failures 3, 4 and 5 from three threads at once: they queue, so the
    // last answer comes after 200 + 400 + 800 ms, not after 800 ms.
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let mine = p.session();
                assert_eq!(guess(&mine).0, RvError::PinIncorrect);
            });
        }
    });
    let together = t.elapsed();
    let serial: Duration = (3..=5).map(documented_delay).sum();
    assert!(
        together >= serial,
        "three concurrent guesses took {together:?}, less than their delays one after another \
         ({serial:?})"
    );
    // Failure 6.
    let (rv, took) = guess(&session);
    assert_eq!(rv, RvError::PinIncorrect);
    assert!(took >= documented_delay(6), "failure 6 took {took:?}");

    let log = s.log_since(start_of_log);
    for n in 2..=6 {
        let line = format!("login: {n} failed logins in a row through this process");
        let ms = format!("answering after {} ms", documented_delay(n).as_millis());
        assert!(
            log.lines().any(|l| l.contains(&line) && l.contains(&ms)),
            "no log line for failure {n} ({ms}):\n{log}"
        );
    }
    assert!(!log.contains("1 failed logins in a row"), "{log}");
    assert!(!log.contains(WRONG), "a PIN reached the log");

    // The right PIN logs in at once and resets the count: the next two
    // failures are counted from one again (the second waits 100 ms, not 6.4 s).
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    session.logout().unwrap();
    let after_reset = s.log().len();
    for n in 1..=2 {
        let (rv, took) = guess(&session);
        assert_eq!(rv, RvError::PinIncorrect);
        assert!(took >= documented_delay(n), "failure {n} took {took:?}");
    }
    let log = s.log_since(after_reset);
    assert!(
        log.contains("login: 2 failed logins in a row through this process")
            && log.contains("answering after 100 ms")
            && !log.contains("7 failed logins in a row"),
        "{log}"
    );
    assert!(
        s.log().contains("succeeded after 6 failed logins in a row"),
        "{}",
        s.log()
    );
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    session.logout().unwrap();
    drop(session);
    drop(p);

    // Every failure is audited, as before the throttle.
    let failed = s
        .audit_records(&[])
        .iter()
        .filter(|r| r["event"] == "login-failed")
        .count();
    assert_eq!(failed, 8);
}

/// The mode bits and group id of a file.
fn mode_and_gid(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.gid())
}

/// The store's -wal and -shm files.
fn sidecars(store: &std::path::Path) -> [std::path::PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut p = store.as_os_str().to_owned();
        p.push(suffix);
        p.into()
    })
}

/// With the process's umask at 022 (which made them 0644 before), the store
/// `p11derive init` creates, its -wal and -shm while a provider runs, and the
/// log file are 0600. A store, -wal, -shm or log file that other users can
/// read is reported at open, by the provider (log) and the CLI (stderr),
/// naming the file, its mode and the fix.
#[test]
fn the_store_and_the_log_are_private_and_loose_modes_are_reported() {
    let _turn = turn();
    // SAFETY: umask only swaps the process's file mode mask.
    let umask = unsafe { libc::umask(0o022) };
    let s = setup(None);
    let log_file = s.dir.join("p11derive.log");
    assert_eq!(mode_and_gid(&s.store).0, 0o600, "store after init");
    {
        let p = s.load();
        let _session = p.user_session();
        for f in sidecars(&s.store).iter().chain([&log_file]) {
            assert_eq!(mode_and_gid(f).0, 0o600, "{} while loaded", f.display());
        }
    }
    assert!(!s.log().contains("has mode"), "{}", s.log());

    // Made readable by others: reported at the next start, for each file.
    use std::os::unix::fs::PermissionsExt;
    let loosen = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
    };
    loosen(&s.store);
    loosen(&log_file);
    let from = s.log().len();
    {
        let p = s.load();
        let _session = p.user_session();
    }
    let log = s.log_since(from);
    let store = s.store.display().to_string();
    for (what, path) in [
        ("store file", store.clone()),
        ("store file", format!("{store}-wal")),
        ("store file", format!("{store}-shm")),
        ("log file", log_file.display().to_string()),
    ] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains(&format!("{what} {path} has mode 0644"))
                && l.contains("every user of this host can read it")
                && l.contains(&format!("chmod 600 {path}"))),
            "no warning for {path}:\n{log}"
        );
    }
    let out = cli(&s, &["asset", "list"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("store file {store} has mode 0644"))
            && err.contains(&format!("chmod 600 {store}"))
            && err.contains(&format!("log file {} has mode 0644", log_file.display())),
        "{err}"
    );
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
}

/// A group the test may give files to without root: the caller's primary
/// group, or, for root (whose files get group 0 anyway), another one, so that
/// giving them to it is shown.
fn a_group() -> (String, u32) {
    let lookup = |name: &str| -> Option<u32> {
        let out = std::process::Command::new("getent")
            .args(["group", name])
            .output()
            .expect("getent runs");
        let line = String::from_utf8(out.stdout).ok()?;
        line.split(':').nth(2)?.trim().parse().ok()
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Some(gid) = lookup("daemon") {
            return ("daemon".into(), gid);
        }
    }
    let out = std::process::Command::new("id")
        .arg("-gn")
        .output()
        .unwrap();
    let name = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let gid = lookup(&name).unwrap_or_else(|| panic!("no group {name:?}"));
    (name, gid)
}

/// With `[store] group`, the store's new directory is 02770, and the store,
/// its -wal and -shm and the log file are 0660, all owned by the group, whatever
/// the umask (022 would make 0660 into 0640). A group the host does not know
/// fails `init` with the key named.
#[test]
fn with_a_group_the_files_are_0660_and_the_groups() {
    let _turn = turn();
    // SAFETY: umask only swaps the process's file mode mask.
    let umask = unsafe { libc::umask(0o022) };
    let (group, gid) = a_group();
    let s = setup_with(None, false);
    let dir = s.dir.join("shared");
    let store = dir.join("state.db");
    let log_file = s.dir.join("p11derive.log");
    let with_group = |g: &str| {
        config_text(&s.token_label, &store, &log_file)
            .replace("[store]\n", &format!("[store]\ngroup = \"{g}\"\n"))
    };
    std::fs::write(&s.config, with_group("no-such-group-p11derive")).unwrap();
    let out = s.cli().arg("init").output().unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("[store] group = \"no-such-group-p11derive\" is not a group"),
        "{}",
        output_text(&out)
    );
    assert!(!store.exists());

    std::fs::write(&s.config, with_group(&group)).unwrap();
    let out = s.cli().arg("init").output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(mode_and_gid(&dir), (0o2770, gid), "store directory");
    assert_eq!(mode_and_gid(&store), (0o660, gid), "store after init");
    {
        let p = s.load();
        let _session = p.user_session();
        for f in sidecars(&store).iter().chain([&log_file]) {
            assert_eq!(
                mode_and_gid(f),
                (0o660, gid),
                "{} while loaded",
                f.display()
            );
        }
    }
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(!log.contains("has mode"), "{log}");
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
}
