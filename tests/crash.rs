//! Crash consistency of the group commit: processes signing on several
//! threads are killed with SIGKILL at random moments, three times over. The
//! store must still open, the audit chain verify, and every signature a
//! process received (written to a file the moment C_Sign returned) must have
//! its record in the log.

mod common;

use std::io::Write;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;

/// A forked signer: 4 threads, each signing 32-byte inputs unique to it and
/// appending `hex(input)` to its own file once C_Sign has returned. Exits 1
/// on any failure (only SIGKILL may end it otherwise).
fn signer(dir: &std::path::Path, child: u32) -> ! {
    let run = std::panic::catch_unwind(|| sign_forever(dir, child));
    let code = if run.is_ok() { 0 } else { 1 };
    // SAFETY: leave the child without the parent's destructors.
    unsafe { libc::_exit(code) }
}

fn sign_forever(dir: &std::path::Path, child: u32) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(module_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let main = ctx.open_rw_session(slot).unwrap();
    main.login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    let key = find_one(&main, "crash", ObjectClass::PRIVATE_KEY).unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let ctx = ctx.clone();
            let path = dir.join(format!("signed-{child}-{t}"));
            std::thread::spawn(move || {
                let s = ctx.open_rw_session(slot).unwrap();
                let mut out = std::fs::File::create(path).unwrap();
                for i in 0u32.. {
                    let mut input = [0u8; 32];
                    input[..4].copy_from_slice(&child.to_be_bytes());
                    input[4..8].copy_from_slice(&t.to_be_bytes());
                    input[8..12].copy_from_slice(&i.to_be_bytes());
                    s.sign(&Mechanism::Ecdsa, key, &input).unwrap();
                    // Straight to the file (no buffering): the parent reads
                    // whatever was written when the process died.
                    out.write_all(format!("{}\n", hex(&input)).as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a signing thread failed");
    }
}

#[test]
fn sigkill_during_group_commits_loses_no_returned_signature_and_breaks_no_chain() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("crash", "secp256k1");
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let mut seed = std::process::id() as u64;
    for round in 0..3u32 {
        let mut children = Vec::new();
        for c in 0..2u32 {
            // SAFETY: the child runs only the provider and its own code, then _exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                signer(&s.dir, round * 10 + c);
            }
            children.push(pid);
        }
        // Let every signer get going (login, first derivation, a signature
        // returned), then kill them all at a pseudo-random moment.
        let wrote = |c: usize| {
            let child = round * 10 + c as u32;
            (0..4).any(|t| {
                std::fs::read_to_string(s.dir.join(format!("signed-{child}-{t}")))
                    .is_ok_and(|text| text.lines().any(|l| l.len() == 64))
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !(0..children.len()).all(wrote) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_millis(100 + (seed >> 33) % 500));
        let mut statuses = Vec::new();
        for pid in &children {
            // SAFETY: signalling our own children, all of them before any check.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in &children {
            let mut status = 0;
            // SAFETY: reaping our own children.
            unsafe { libc::waitpid(*pid, &mut status, 0) };
            statuses.push(status);
        }
        for (c, status) in statuses.into_iter().enumerate() {
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
                "round {round}: signer {c} ended before the kill (status {status})"
            );
            assert!(
                wrote(c),
                "round {round}: signer {c} returned no signature within 60 s"
            );
        }
    }

    // After the SIGKILLs the store opens and the chain verifies.
    s.audit_verifies();
    // Every signature a process received has its record.
    let recorded = s.signed_inputs(&["--asset", "crash"]);
    let mut returned = 0;
    for entry in std::fs::read_dir(&s.dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("signed-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            // A line cut by the kill is not a whole input: skip it.
            if line.len() != 64 {
                continue;
            }
            returned += 1;
            assert!(
                recorded.contains(&sha256_hex(&unhex(line))),
                "a signature was returned without its record: input {line}"
            );
        }
    }
    assert!(
        returned > 100,
        "only {returned} signatures returned in three rounds"
    );
}
