//! A full disk under the store: the store and its WAL live on a small tmpfs,
//! filled until a few hundred KiB remain, while several threads sign until
//! the audit records no longer fit. Every failure must be clean (the
//! documented CKR_DEVICE_ERROR, a log line naming the store and the full
//! disk), no signature may leave without its record, nothing may crash or
//! hang; `p11derive asset rotate` must fail cleanly and change nothing. Once
//! space is freed, the same process signs again without re-initialization,
//! the chain verifies and the store opens in a fresh process.
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it the test fails and says so.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

/// A tmpfs mounted for the test, unmounted when dropped (also on a failed
/// assertion: declare it before anything that opens files in it).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let (source, target, fstype) = (
            c("p11derive-disk-test"),
            c(dir.to_str().unwrap()),
            c("tmpfs"),
        );
        let data = c(&format!("size={bytes},mode=0700"));
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            panic!(
                "mounting a {bytes}-byte tmpfs on {} failed ({e}): this test needs root \
                 (CAP_SYS_ADMIN) to put the store on a small file system and fill it; it cannot \
                 run without",
                dir.display()
            );
        }
        let fs = Tmpfs {
            dir: dir.to_path_buf(),
        };
        let (total, _) = fs.space();
        assert!(
            total <= bytes + 4096,
            "{} is not the {bytes}-byte tmpfs just mounted ({total} bytes)",
            dir.display()
        );
        fs
    }

    /// (size, bytes available) of the file system.
    fn space(&self) -> (u64, u64) {
        let path = CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a zeroed statvfs is a valid out-buffer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        (
            st.f_blocks as u64 * st.f_frsize as u64,
            st.f_bavail as u64 * st.f_frsize as u64,
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // Still busy (a failed test left a file open): detach it now, it
            // goes when the last user does.
            // SAFETY: as above.
            let lazy = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            eprintln!(
                "unmounting {} failed ({e}); lazy unmount: {}",
                self.dir.display(),
                if lazy == 0 { "done" } else { "failed" }
            );
        }
    }
}

/// Writes `bytes` of filler into `path` (real pages, not a sparse file).
fn fill(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("filling the tmpfs");
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// Appends to the filler until the file system refuses another byte.
fn top_up(path: &Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..1]).is_ok() {}
}

const ASSETS: [(&str, &str); 2] = [("disk-k1", "secp256k1"), ("disk-p256", "p256")];

/// A signature a caller received.
struct Signed {
    asset: usize,
    input: [u8; 32],
    sig: Vec<u8>,
}

/// What one signing thread saw.
#[derive(Default)]
struct Outcome {
    signed: Vec<Signed>,
    /// Inputs whose C_Sign failed with CKR_DEVICE_ERROR.
    failed: Vec<[u8; 32]>,
    /// Anything else (must stay empty).
    unexpected: Vec<String>,
    slowest: Duration,
}

/// The input of signature `i` of thread `t` in phase `phase`: unique.
fn input(phase: u8, t: u32, i: u32) -> [u8; 32] {
    let mut x = [phase; 32];
    x[..4].copy_from_slice(&t.to_be_bytes());
    x[4..8].copy_from_slice(&i.to_be_bytes());
    x
}

/// Signs with `key` until `failures_wanted` consecutive C_Sign calls failed
/// or `deadline` passes; every result is recorded.
fn sign_until_full(
    session: &Session,
    key: ObjectHandle,
    asset: usize,
    t: u32,
    w: &Watched,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut in_a_row = 0;
    let mut i = 0;
    while in_a_row < 10 && Instant::now() < deadline {
        i += 1;
        let data = input(1, t, i);
        let t0 = Instant::now();
        let r = w.step("C_Sign", || session.sign(&Mechanism::Ecdsa, key, &data));
        out.slowest = out.slowest.max(t0.elapsed());
        match r {
            Ok(sig) => {
                in_a_row = 0;
                out.signed.push(Signed {
                    asset,
                    input: data,
                    sig,
                });
            }
            Err(e) => match rv_code(&e) {
                Ok(RvError::DeviceError) => {
                    in_a_row += 1;
                    out.failed.push(data);
                }
                other => out.unexpected.push(format!("C_Sign: {other:?}")),
            },
        }
    }
    out
}

#[test]
fn a_full_disk_fails_operations_cleanly_and_signing_resumes_once_space_is_freed() {
    let _turn = turn();
    let started = Instant::now();
    let watchdog = Watchdog::start(Duration::from_secs(30));
    let main = watchdog.watch("main");
    // The backing token (on the ordinary disk) now; the store on the tmpfs.
    let s = setup_with(None, false);
    let mnt = s.dir.join("mnt");
    let fs = Tmpfs::mount(&mnt, 8 << 20);
    let s = Setup {
        store: mnt.join("state.db"),
        ..s
    };
    std::fs::write(
        &s.config,
        config_text(&s.token_label, &s.store, &s.dir.join("p11derive.log")),
    )
    .unwrap();
    for args in [
        &["init"][..],
        &["asset", "create", ASSETS[0].0, "--type", ASSETS[0].1],
        &["asset", "create", ASSETS[1].0, "--type", ASSETS[1].1],
        &["asset", "create", "disk-rot", "--type", "p256"],
    ] {
        let out = main.step(format!("p11derive {args:?}"), || cli(&s, args));
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
    let p = main.step("C_Initialize", || s.load());
    let login = p.user_session();
    let keys = ASSETS.map(|(name, _)| private_key(&login, name));
    // Every key derived and cached while there is room.
    for key in keys {
        login.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).unwrap();
    }

    let filler = mnt.join("filler");
    let store_name = s.store.display().to_string();
    let mut outcomes = Vec::new();
    let mut recovered = Vec::new();
    let mut slowest = Duration::ZERO;
    // Twice: the disk fills, operations fail, space comes back, signing
    // resumes, in the same process. The first time the CLI tries a rotation
    // on the full disk, the second time a login is tried on it.
    for (round, leave) in [(0u8, 256u64 << 10), (1, 64 << 10)] {
        let (_, free) = fs.space();
        assert!(free > leave, "only {free} bytes free on the tmpfs");
        fill(&filler, free - leave);
        let (_, free) = fs.space();
        assert!(
            free <= leave + (64 << 10),
            "{free} bytes still free after filling"
        );
        let log_from = s.log().len();

        // Four threads, two per asset, each with its own session, sign
        // until their records no longer fit.
        let deadline = Instant::now() + Duration::from_secs(20);
        let workers: Vec<_> = (0..4u32)
            .map(|t| {
                let session = p.session();
                let asset = t as usize % 2;
                let key = keys[asset];
                let w = watchdog.watch(format!("round-{round}-signer-{t}"));
                let t = u32::from(round) * 10 + t;
                std::thread::spawn(move || {
                    let out = sign_until_full(&session, key, asset, t, &w, deadline);
                    (session, out)
                })
            })
            .collect();
        let mut sessions = Vec::new();
        for (t, h) in workers.into_iter().enumerate() {
            let (session, out) = main
                .step(format!("joining signer {t}"), || h.join())
                .expect("a signing thread panicked");
            assert!(
                out.unexpected.is_empty(),
                "round {round}: a full disk must fail C_Sign only with CKR_DEVICE_ERROR: {:?}",
                out.unexpected
            );
            assert!(
                out.failed.len() >= 10,
                "round {round}: signer {t} never ran out of space within 20 s ({} signed, {} \
                 failed)",
                out.signed.len(),
                out.failed.len()
            );
            slowest = slowest.max(out.slowest);
            sessions.push(session);
            outcomes.push(out);
        }
        assert!(
            slowest < Duration::from_secs(15),
            "a C_Sign on the full disk took {slowest:?}"
        );
        let full_log = s.log_since(log_from);
        let line = full_log
            .lines()
            .find(|l| l.contains("sign result discarded"))
            .unwrap_or_else(|| panic!("no log line about the discarded signatures:\n{full_log}"));
        assert!(
            line.contains(&store_name) && line.contains("is full") && line.contains("free space"),
            "the log line must name the store, say its disk is full and how to fix it: {line}"
        );
        assert!(!mentions_pin(&full_log), "the PIN reached the log");

        top_up(&filler);
        if round == 0 {
            // The CLI on the full disk: rotate fails cleanly, changes nothing.
            let before = s.asset_show("disk-rot");
            let out = main.step("p11derive asset rotate (full)", || {
                cli(&s, &["asset", "rotate", "disk-rot"])
            });
            assert_eq!(
                out.status.code(),
                Some(1),
                "rotate on a full disk: {}",
                output_text(&out)
            );
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                said.contains(&store_name)
                    && said.contains("is full")
                    && said.contains("free space"),
                "rotate on a full disk must name the store, say it is full and how to fix it: \
                 {said}"
            );
            assert!(!said.contains("panicked"), "{said}");
            assert_eq!(
                s.asset_show("disk-rot"),
                before,
                "a failed rotation changed the asset"
            );
            let list = cli(&s, &["asset", "list"]);
            assert!(
                list.status.success(),
                "asset list on a full disk: {}",
                output_text(&list)
            );
            let row = String::from_utf8_lossy(&list.stdout)
                .lines()
                .find(|l| l.starts_with("disk-rot "))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            assert!(row.starts_with("disk-rot p256 ACTIVE 1 1 "), "{row:?}");
        } else {
            // A login on the full disk cannot be audited: refused, cleanly.
            login.logout().unwrap();
            let from = s.log().len();
            let r = main.step("C_Login (full)", || {
                login.login(
                    cryptoki::session::UserType::User,
                    Some(&cryptoki::types::AuthPin::from(PIN)),
                )
            });
            assert_eq!(
                rv_of(r),
                RvError::DeviceError,
                "a login that cannot be audited"
            );
            let info = login.get_session_info().unwrap();
            assert_eq!(
                info.session_state(),
                cryptoki::session::SessionState::RwPublic,
                "a refused login left the session logged in"
            );
            let said = s.log_since(from);
            assert!(
                said.contains(&store_name) && said.contains("is full"),
                "the refused login's log line must name the store and the full disk: {said}"
            );
        }

        // Space again: the same sessions sign, and a new one, with no
        // re-initialization.
        std::fs::remove_file(&filler).unwrap();
        if round == 1 {
            login
                .login(
                    cryptoki::session::UserType::User,
                    Some(&cryptoki::types::AuthPin::from(PIN)),
                )
                .expect("C_Login once space was freed");
        }
        let fresh = p.session();
        for (t, session) in sessions.iter().chain([&fresh]).enumerate() {
            let asset = t % 2;
            let data = input(2 + round, t as u32, 0);
            let sig = main
                .step("C_Sign after freeing", || {
                    session.sign(&Mechanism::Ecdsa, keys[asset], &data)
                })
                .unwrap_or_else(|e| panic!("round {round}: session {t} after freeing: {e}"));
            recovered.push(Signed {
                asset,
                input: data,
                sig,
            });
        }
    }
    let out = main.step("p11derive asset rotate (space)", || {
        cli(&s, &["asset", "rotate", "disk-rot"])
    });
    assert!(
        out.status.success(),
        "rotate after freeing: {}",
        output_text(&out)
    );
    assert_eq!(s.asset_show("disk-rot")["current"], 2);
    drop(login);
    drop(p);

    // A fresh process opens the store, and the chain verifies.
    main.step("p11derive audit verify", || s.audit_verifies());
    let recorded = s.signed_inputs(&[]);
    let points = ASSETS.map(|(name, _)| {
        let v = s.asset_show(name);
        assert_eq!(v["current"], 1);
        unhex(v["versions"][0]["public_key"].as_str().unwrap())
    });
    let returned: Vec<&Signed> = outcomes
        .iter()
        .flat_map(|o| &o.signed)
        .chain(&recovered)
        .collect();
    for sig in &returned {
        let (name, kt) = ASSETS[sig.asset];
        assert!(
            recorded.contains(&sha256_hex(&sig.input)),
            "a signature with {name} was returned without its record: input {}",
            hex(&sig.input)
        );
        assert!(
            ecdsa_verifies(kt, &points[sig.asset], &sig.input, &sig.sig),
            "a returned {name} signature does not verify: input {}",
            hex(&sig.input)
        );
    }
    // A failure is a failure: no record claims a signature nobody received.
    let failed: Vec<&[u8; 32]> = outcomes.iter().flat_map(|o| &o.failed).collect();
    for data in &failed {
        assert!(
            !recorded.contains(&sha256_hex(*data)),
            "C_Sign failed but its signature is recorded as made: input {}",
            hex(*data)
        );
    }
    drop(main);
    drop(watchdog);
    drop(fs);
    eprintln!(
        "full disk: {} signatures before the disk filled, {} refused with CKR_DEVICE_ERROR \
         (slowest C_Sign {slowest:?}), {} after freeing; {:?} in all",
        returned.len() - recovered.len(),
        failed.len(),
        recovered.len(),
        started.elapsed()
    );
}
