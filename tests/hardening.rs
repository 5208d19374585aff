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
        (rv, t.elapsed())
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
