//! Provider processes as hosts: forked children that sign until told to stop, one line per call.

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
    start_hosts_after(a, b, stop, &a.dir.join("never"))
}

/// As `start_hosts`; each host marks its first signature made after
/// `after` exists (`host-N.signed`).
pub fn start_hosts_after(
    a: &Setup,
    b: &Setup,
    stop: &Path,
    after: &Path,
) -> Vec<(libc::pid_t, PathBuf, u8)> {
    let mut children = Vec::new();
    for (tag, s) in [(1u8, a), (2u8, b)] {
        let out = a.dir.join(format!("host-{tag}.txt"));
        let pid = fork_child(&out, || host(&s.config, &out, stop, after, tag));
        children.push((pid, out, tag));
    }
    children
}

/// Two hosts' setups (A, and B with its own config and log) for the
/// PostgreSQL store at `url`, initialized, with the asset `shared`.
pub fn two_hosts_on(url: &str) -> (Setup, Setup) {
    let a = setup_with(None, false);
    a.use_pg(url);
    a.init();
    let b = a.another_host("host-b");
    a.create_asset("shared", "secp256k1");
    (a, b)
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

/// A rotation from version 1 (`keys.0`) to 2 (`keys.1`) made between
/// `rotation.0` and `rotation.1` (ns): the version a host's signature over
/// `digest`, made between `call.0` and `call.1`, verifies under. Panics on
/// one under version 1 begun after the rotation, under 2 ended before it,
/// or under neither.
pub fn version_signed(
    keys: (&[u8], &[u8]),
    digest: &[u8; 32],
    sig: &[u8],
    call: (u128, u128),
    rotation: (u128, u128),
    tag: u8,
) -> u64 {
    let by1 = ecdsa_verifies("secp256k1", keys.0, digest, sig);
    let by2 = ecdsa_verifies("secp256k1", keys.1, digest, sig);
    if call.0 > rotation.1 {
        assert!(
            by2 && !by1,
            "host {tag} signed with version 1 after the rotation"
        );
    } else if call.1 < rotation.0 {
        assert!(by1, "host {tag} signed with version 2 before the rotation");
    } else {
        assert!(by1 || by2, "host {tag}: a signature under neither version");
    }
    if by2 {
        2
    } else {
        1
    }
}

/// One call a host made (a line of its output).
pub struct Call {
    pub t0: u128,
    pub t1: u128,
    pub digest: [u8; 32],
    /// `ok`, or the refusal's return value.
    pub outcome: String,
    pub sig: Vec<u8>,
    pub line: String,
}

/// A host's output as calls.
pub fn calls(text: &str) -> Vec<Call> {
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            Call {
                t0: f[0].parse().unwrap(),
                t1: f[1].parse().unwrap(),
                digest: unhex(f[2]).try_into().unwrap(),
                outcome: f[3].to_string(),
                sig: f.get(4).map(|s| unhex(s)).unwrap_or_default(),
                line: line.to_string(),
            }
        })
        .collect()
}

/// The public keys of `shared`'s versions 1 (as `v1`, read before the
/// rotation, showed them) and 2 (as `a` shows them now).
pub fn rotation_keys(a: &Setup, v1: &[(u64, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let v2 = version_keys(&a.asset_show("shared"));
    let key = |keys: &[(u64, Vec<u8>)], v: u64| keys.iter().find(|k| k.0 == v).unwrap().1.clone();
    (key(v1, 1), key(&v2, 2))
}

/// Rotates `shared` on host A while `children` sign, creates `rotated`, and
/// waits until each child signed after it; the rotation's start and end (ns).
pub fn rotate_under(
    a: &Setup,
    children: &[(libc::pid_t, PathBuf, u8)],
    rotated: &Path,
) -> (u128, u128) {
    let before = now_ns();
    let out = cli(a, &["asset", "rotate", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let after = now_ns();
    std::fs::write(rotated, b"").unwrap();
    for (_, out, _) in children {
        wait_for(&out.with_extension("signed"));
    }
    (before, after)
}

/// A new PostgreSQL store (database `name`) with the asset `shared`, and
/// two hosts' setups for it: (the store's URL, host A, host B).
pub fn two_hosts(name: &str) -> (String, Setup, Setup) {
    let url = pg_database(&pg_admin_url(), name);
    let (a, b) = two_hosts_on(&url);
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
