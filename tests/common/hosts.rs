//! Hosts for the PostgreSQL tests: forked provider processes signing with one alias, and a DBA's connection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;

use super::*;

pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A forked host: its own provider with `config`, signing with the alias
/// `shared` until `stop` exists (120 s at most), one line per call into
/// `out`: `t0 t1 digest ok sig` or `t0 t1 digest rv`. It creates `refused`
/// at its first refusal, and `signed` at its first signature made after
/// `after` exists. Each line is also appended to `out` + `.live` as it is
/// made (what a host killed midway had returned).
pub fn host(
    config: &Path,
    out: &Path,
    stop: &Path,
    after: &Path,
    tag: u8,
) -> Result<String, String> {
    let dir = out.parent().unwrap();
    let name = out.file_stem().unwrap().to_string_lossy().into_owned();
    {
        std::env::set_var("P11DERIVE_CONF", config);
        let (ctx, session) = child_session()?;
        let key = find_one(&session, "shared", ObjectClass::PRIVATE_KEY).ok_or("no alias")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = String::new();
        let mut live =
            std::fs::File::create(out.with_extension("live")).map_err(|e| e.to_string())?;
        let mut i: u32 = 0;
        while !stop.exists() && Instant::now() < deadline {
            i += 1;
            let mut digest = [tag; 32];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            let late = after.exists();
            let t0 = now_ns();
            let r = session.sign(&Mechanism::Ecdsa, key, &digest);
            let t1 = now_ns();
            let outcome = match r {
                Ok(sig) => {
                    if late {
                        let _ = std::fs::write(dir.join(format!("{name}.signed")), b"");
                    }
                    format!("ok {}", hex(&sig))
                }
                Err(e) => {
                    let _ = std::fs::write(dir.join(format!("{name}.refused")), b"");
                    format!("{:?}", rv_of::<()>(Err(e)))
                }
            };
            let line = format!("{t0} {t1} {} {outcome}\n", hex(&digest));
            std::io::Write::write_all(&mut live, line.as_bytes()).map_err(|e| e.to_string())?;
            lines.push_str(&line);
        }
        ctx.finalize().map_err(|e| e.to_string())?;
        Ok(lines)
    }
}

/// Waits until `file` exists (60 s at most).
pub fn wait_for(file: &Path) {
    let limit = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(Instant::now() < limit, "{} never appeared", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two forked hosts (A's setup and another host's) signing with `shared`
/// until `stop` exists; their pids and output files.
pub fn start_hosts(a: &Setup, b: &Setup, stop: &Path) -> Vec<(libc::pid_t, PathBuf, u8)> {
    let never = a.dir.join("never");
    let mut children = Vec::new();
    for (tag, s) in [(1u8, a), (2u8, b)] {
        let out = a.dir.join(format!("host-{tag}.txt"));
        let pid = fork_child(&out, || host(&s.config, &out, stop, &never, tag));
        children.push((pid, out, tag));
    }
    children
}

/// Stops the hosts; each one's lines as (t0, t1, ok).
pub fn stop_hosts(
    stop: &Path,
    children: Vec<(libc::pid_t, PathBuf, u8)>,
) -> Vec<Vec<(u128, u128, bool)>> {
    std::fs::write(stop, b"").unwrap();
    children
        .into_iter()
        .map(|(pid, out, tag)| {
            reap(pid, &out, &format!("host {tag}"))
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[3] == "ok")
                })
                .collect()
        })
        .collect()
}

/// A new PostgreSQL store (database `name`) with the asset `shared`, and
/// two hosts' setups for it: (the store's URL, host A, host B).
pub fn two_hosts(name: &str) -> (String, Setup, Setup) {
    let url = pg_database(&pg_admin_url(), name);
    let a = setup_with(None, false);
    a.use_pg(&url);
    a.init();
    let b = a.another_host("host-b");
    a.create_asset("shared", "secp256k1");
    (url, a, b)
}

/// The administrator's URL of the test database at `url`.
pub fn admin_url_of(url: &str) -> String {
    let admin = pg_admin_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{}", url.rsplit('/').next().unwrap())
}

/// A database administrator's connection (SQL, no HSM, no PIN).
pub fn dba(url: &str) -> postgres::Client {
    postgres::Client::connect(&admin_url_of(url), postgres::NoTls).expect("DBA connects")
}
