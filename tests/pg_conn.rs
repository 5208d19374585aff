//! The PostgreSQL connection layer for real: TLS modes against a private server with certificates the test makes, a frozen server failing calls in bounded time, PgBouncer in transaction mode, the server's words in messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use common::hosts::*;
use common::*;
use p11derive::config::StoreSection;
use p11derive::store::Store;

/// The TLS server's port, and the plain one's (frozen, and behind PgBouncer
/// on `BOUNCER`): private servers, so stopping or freezing them disturbs no
/// other test.
const TLS_PORT: u16 = 55434;
const PLAIN_PORT: u16 = 55435;
const BOUNCER: u16 = 55436;

/// tools/pg.sh for the server on `port`, with `env`; its output.
fn pg_sh(port: u16, env: &[(&str, &str)], args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pg.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(args)
        .env("P11DERIVE_PG_PORT", port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg.sh {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops the server on `port` (and the bouncer) however the test ends.
struct Stop(u16);

impl Drop for Stop {
    fn drop(&mut self) {
        if self.0 == PLAIN_PORT {
            pg_sh(PLAIN_PORT, &[], &["bouncer-stop", &BOUNCER.to_string()]);
            // Never left frozen.
            signal_server(PLAIN_PORT, libc::SIGCONT);
        }
        pg_sh(self.0, &[], &["stop"]);
    }
}

/// A database `name` owned by the role p11derive (password `p11derive-test`)
/// on the server on `port`, made over its Unix socket (which needs no TLS).
fn database(port: u16, name: &str) -> String {
    let socket = format!("/tmp/p11derive-pg-{port}");
    let mut c = postgres::Client::connect(
        &format!("host={socket} port={port} user=postgres dbname=postgres"),
        postgres::NoTls,
    )
    .expect("the administrator connects over the socket");
    pg_database_with(&mut c, &format!("127.0.0.1:{port}"), name)
}

/// `[store]` for `url` with this sslmode and CA file.
fn section(url: &str, mode: Option<&str>, ca: Option<&Path>) -> StoreSection {
    StoreSection {
        url: Some(url.to_string()),
        sslmode: mode.map(str::to_string),
        ca_file: ca.map(Path::to_path_buf),
        connect_timeout_ms: 5_000,
        ..StoreSection::default()
    }
}

/// Opens the store `c` names: `Ok` or the message.
fn open(c: &StoreSection) -> Result<(), String> {
    Store::open_config(c).map(drop).map_err(|e| e.to_string())
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        output_text(&out)
    );
}

/// A CA (`NAME.crt`, `NAME.key`) made in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=p11derive test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    dir.join(format!("{name}.crt"))
}

/// server.crt (naming only the address 127.0.0.1) and server.key, signed by
/// the CA `ca`, in `dir`.
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=p11derive test server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
}

#[test]
fn tls_modes_against_a_server_that_takes_tls_only() {
    let _turn = turn();
    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path(), "ca");
    let other_ca = make_ca(certs.path(), "other-ca");
    make_server_cert(certs.path(), "ca");
    // A fresh server with this run's certificate, TLS only (hostssl).
    pg_sh(TLS_PORT, &[], &["stop"]);
    let _ = std::fs::remove_dir_all(format!("/tmp/p11derive-pg-{TLS_PORT}"));
    let tls_dir = certs.path().to_str().unwrap();
    pg_sh(TLS_PORT, &[("P11DERIVE_PG_TLS_DIR", tls_dir)], &["start"]);
    let _stop = Stop(TLS_PORT);
    let url = database(TLS_PORT, "p11derive_tls");
    let by_name = url.replace("127.0.0.1", "localhost");

    // verify-full: the chain to the CA given, and the address in the
    // certificate. The schema is created over it.
    Store::create_config(&section(&url, Some("verify-full"), Some(&ca)))
        .expect("verify-full with the right CA and name");
    // The server refuses a connection without TLS, in its own words.
    let e = open(&section(&url, Some("disable"), None)).unwrap_err();
    assert!(
        e.contains("28000") && e.contains("no encryption") && e.contains("pg_hba.conf"),
        "{e}"
    );
    assert!(
        !e.contains("p11derive-test"),
        "no password in messages: {e}"
    );
    // require and prefer: TLS, the certificate not checked.
    open(&section(&url, Some("require"), None)).expect("require");
    open(&section(&by_name, None, None)).expect("prefer (the default)");
    // verify-ca checks the chain, not the name.
    open(&section(&by_name, Some("verify-ca"), Some(&ca))).expect("verify-ca, right CA");
    let e = open(&section(&url, Some("verify-ca"), Some(&other_ca))).unwrap_err();
    assert!(
        e.contains("TLS") && e.contains("certificate verify failed") && e.contains("ca_file"),
        "verify-ca with another CA: {e}"
    );
    // verify-full also checks the name: localhost is not in the certificate.
    let e = open(&section(&by_name, Some("verify-full"), Some(&ca))).unwrap_err();
    assert!(
        e.contains("certificate verify failed") && e.contains("sslmode"),
        "verify-full with a name the certificate lacks: {e}"
    );
    // require with a CA file checks the chain too (libpq's rule).
    assert!(open(&section(&url, Some("require"), Some(&other_ca))).is_err());

    // Bad settings: each names its key and the fix.
    let e = open(&section(&url, Some("verify-full"), None)).unwrap_err();
    assert!(e.contains("[store] ca_file is not set"), "{e}");
    let e = open(&section(&url, Some("verify-all"), None)).unwrap_err();
    assert!(
        e.contains("[store] sslmode = \"verify-all\"") && e.contains("verify-full"),
        "{e}"
    );
    let missing = certs.path().join("nowhere.pem");
    let e = open(&section(&url, Some("verify-ca"), Some(&missing))).unwrap_err();
    assert!(
        e.contains("[store] ca_file") && e.contains("nowhere.pem"),
        "{e}"
    );
    let e = open(&section(
        &format!("{url}?sslmode=require"),
        Some("verify-ca"),
        Some(&ca),
    ))
    .unwrap_err();
    assert!(e.contains("keep only the [store] sslmode key"), "{e}");
    // The URL's sslmode, libpq's names included, when the key is not set.
    open(&section(
        &format!("{url}?sslmode=verify-full"),
        None,
        Some(&ca),
    ))
    .expect("URL sslmode");

    // The provider over verify-full signs, and logs what was negotiated.
    let s = setup_with(None, false);
    s.use_pg(&database(TLS_PORT, "p11derive_tls_sign"));
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "[store]\n",
        &format!(
            "[store]\nsslmode = \"verify-full\"\nca_file = \"{}\"\n",
            ca.display()
        ),
        1,
    );
    std::fs::write(&s.config, text).unwrap();
    s.init();
    s.create_asset("tls", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, "tls");
    session.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).unwrap();
    drop(session);
    drop(p);
    let log = s.log();
    assert!(
        log.contains(
            "127.0.0.1:55434/p11derive_tls_sign: connected with TLS (sslmode verify-full; \
             certificate chain and host name verified)"
        ),
        "{log}"
    );
    s.audit_verifies();
}

#[test]
fn messages_carry_the_servers_words_never_the_password() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_conn_words");
    let wrong = url.replace(":p11derive-test@", ":not-the-pw-4711@");
    let e = open(&section(&wrong, None, None)).unwrap_err();
    assert!(
        e.contains("28P01")
            && e.contains("password authentication failed for user \"p11derive\"")
            && e.contains("check the user and password of [store] url")
            && e.contains("p11derive@127.0.0.1:55432/p11derive_conn_words"),
        "{e}"
    );
    assert!(
        !e.contains("not-the-pw-4711"),
        "the password in a message: {e}"
    );
    let e = open(&section(
        &url.replace("p11derive_conn_words", "p11derive_nosuch"),
        None,
        None,
    ))
    .unwrap_err();
    assert!(
        e.contains("3D000") && e.contains("database \"p11derive_nosuch\" does not exist"),
        "{e}"
    );
    assert!(
        !e.contains("p11derive-test"),
        "the password in a message: {e}"
    );
    // Nothing listens on port 9: refused, said so.
    let e = open(&section(&url.replace(":55432/", ":9/"), None, None)).unwrap_err();
    assert!(e.contains("refused") && e.contains("host and port"), "{e}");
    // A query error keeps its SQLSTATE: the database holds no schema.
    let e = open(&section(&url, None, None)).unwrap_err();
    assert!(
        !e.contains("db error") && !e.contains("p11derive-test"),
        "{e}"
    );
}

/// Sends `sig` to every process of the server on `port` (the postmaster and
/// its children), by pid.
fn signal_server(port: u16, sig: libc::c_int) -> usize {
    let pidfile = format!("/tmp/p11derive-pg-{port}/postmaster.pid");
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return 0;
    };
    let master: i32 = text.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![master];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, not ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == master {
            pids.push(pid);
        }
    }
    for pid in &pids {
        // SAFETY: kill(2) with a pid read from the server's pid file or
        // /proc, and a plain signal number.
        unsafe { libc::kill(*pid, sig) };
    }
    pids.len()
}

/// A provider on the store at `url` with `connect_timeout_ms = timeout_ms`,
/// logged in, its asset `name` made and one signature (over `[1; 32]`)
/// made: the setup, the provider, its session and the key.
fn signer(url: &str, timeout_ms: u64, name: &str) -> (Setup, Provider, Session, ObjectHandle) {
    let s = setup_with(None, false);
    s.use_pg(url);
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "[store]\n",
        &format!("[store]\nconnect_timeout_ms = {timeout_ms}\n"),
        1,
    );
    std::fs::write(&s.config, text).unwrap();
    s.init();
    s.create_asset(name, "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, name);
    session.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).unwrap();
    (s, p, session, key)
}

#[test]
fn a_frozen_server_fails_calls_within_the_timeout_and_its_return_works() {
    let _turn = turn();
    pg_sh(PLAIN_PORT, &[], &["start"]);
    let _stop = Stop(PLAIN_PORT);
    let url = database(PLAIN_PORT, "p11derive_frozen");
    let (s, p, session, key) = signer(&url, 3000, "frozen");

    let frozen = signal_server(PLAIN_PORT, libc::SIGSTOP);
    assert!(frozen >= 3, "the server's processes: {frozen}");
    let logged = s.log().len();
    let mut took = Vec::new();
    for b in [2u8, 3] {
        let started = Instant::now();
        let r = session.sign(&Mechanism::Ecdsa, key, &[b; 32]);
        took.push(started.elapsed());
        assert_eq!(
            rv_of(r),
            RvError::DeviceError,
            "no signature without its record"
        );
    }
    // Let the frozen spell last its 10 s, then thaw.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(took.iter().sum()));
    signal_server(PLAIN_PORT, libc::SIGCONT);
    eprintln!("calls against the frozen server failed after {took:?}");
    for t in &took {
        assert!(
            *t >= Duration::from_millis(2_900) && *t < Duration::from_millis(4_500),
            "a call failed after {t:?}, not connect_timeout_ms (3 s)"
        );
    }
    let log = s.log_since(logged);
    assert!(
        log.contains("did not answer within 3000 ms ([store] connect_timeout_ms)")
            && log.contains("127.0.0.1:55435/p11derive_frozen")
            && !log.contains("p11derive-test"),
        "{log}"
    );
    let started = Instant::now();
    session
        .sign(&Mechanism::Ecdsa, key, &[4u8; 32])
        .expect("the thawed server serves the next call");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(session);
    drop(p);
    s.audit_verifies();
    let signed = s.signed_inputs(&["--asset", "frozen"]);
    for b in [1u8, 4] {
        assert!(signed.contains(&sha256_hex(&[b; 32])));
    }
}

#[test]
fn two_hosts_sign_through_pgbouncer_in_transaction_mode_and_both_honour_a_rotation() {
    let _turn = turn();
    pg_sh(PLAIN_PORT, &[], &["start"]);
    let _stop = Stop(PLAIN_PORT);
    let direct = database(PLAIN_PORT, "p11derive_bouncer");
    pg_sh(
        PLAIN_PORT,
        &[],
        &[
            "bouncer-start",
            &BOUNCER.to_string(),
            "p11derive=p11derive-test",
        ],
    );
    let url = direct.replace(&format!(":{PLAIN_PORT}/"), &format!(":{BOUNCER}/"));
    let (a, b) = two_hosts_on(&url);
    let v1 = version_keys(&a.asset_show("shared"));
    let stop = a.dir.join("stop");
    let rotated = a.dir.join("rotated");
    let children = start_hosts_after(&a, &b, &stop, &rotated);
    std::thread::sleep(Duration::from_millis(600));
    let (before_rotate, rotated_at) = rotate_under(&a, &children, &rotated);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, b"").unwrap();

    let (k1, k2) = rotation_keys(&a, &v1);
    let mut inputs = std::collections::HashSet::new();
    for (pid, out, tag) in &children {
        let text = reap(*pid, out, &format!("host {tag}"));
        let (mut old, mut new) = (0, 0);
        for c in calls(&text) {
            if c.outcome != "ok" {
                // Only a call begun under version 1 and committed after the
                // rotation: refused at its commit, never signed under it.
                let heard = rotated_at + Duration::from_millis(500).as_nanos();
                assert!(
                    c.outcome == "KeyFunctionNotPermitted"
                        && c.t1 >= before_rotate
                        && c.t0 <= heard,
                    "host {tag}: {}",
                    c.line
                );
                continue;
            }
            inputs.insert(sha256_hex(&c.digest));
            let (call, rotation) = ((c.t0, c.t1), (before_rotate, rotated_at));
            match version_signed((&k1, &k2), &c.digest, &c.sig, call, rotation, *tag) {
                1 => old += 1,
                _ => new += 1,
            }
        }
        assert!(old > 0 && new > 0, "host {tag}: {old} before, {new} after");
    }
    b.audit_verifies();
    assert_eq!(
        a.signed_inputs(&["--asset", "shared"]),
        inputs,
        "the records of the signatures, exactly"
    );
    // PgBouncer offers no TLS here: the log says the link is unencrypted.
    assert!(
        a.log().contains(&format!(
            "127.0.0.1:{BOUNCER}/p11derive_bouncer: connected without TLS (sslmode prefer)"
        )),
        "{}",
        a.log()
    );
}

#[test]
fn a_commit_stuck_behind_a_lock_fails_in_time_and_commits_nothing() {
    let _turn = turn();
    let admin = pg_admin_url();
    let url = pg_database(&admin, "p11derive_conn_lock");
    let (s, p, session, key) = signer(&url, 2000, "locked");

    // A DBA's session holds the audit table: every commit waits on it.
    let (base, _) = admin.rsplit_once('/').unwrap();
    let mut dba =
        postgres::Client::connect(&format!("{base}/p11derive_conn_lock"), postgres::NoTls).unwrap();
    let mut held = dba.transaction().unwrap();
    held.batch_execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let logged = s.log().len();
    let started = Instant::now();
    let r = session.sign(&Mechanism::Ecdsa, key, &[2u8; 32]);
    let took = started.elapsed();
    assert_eq!(rv_of(r), RvError::DeviceError);
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_millis(3_000),
        "failed after {took:?}, not within connect_timeout_ms (2 s)"
    );
    let log = s.log_since(logged);
    assert!(
        log.contains("55P03") && log.contains("lock timeout"),
        "{log}"
    );
    // The server ended the waiting statement itself: once the lock is
    // released, nothing of the failed call is committed.
    std::thread::sleep(Duration::from_millis(500));
    held.commit().unwrap();
    session
        .sign(&Mechanism::Ecdsa, key, &[3u8; 32])
        .expect("the next call, the lock released");
    drop(session);
    drop(p);
    s.audit_verifies();
    let signed = s.signed_inputs(&["--asset", "locked"]);
    assert!(signed.contains(&sha256_hex(&[1u8; 32])) && signed.contains(&sha256_hex(&[3u8; 32])));
    assert!(
        !signed.contains(&sha256_hex(&[2u8; 32])),
        "the failed call's record was committed after it failed"
    );
}
