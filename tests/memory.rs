//! Where secrets live in memory (issue 5): the test scans the whole memory of
//! its own process (`/proc/self/maps` + `/proc/self/mem`), with the provider
//! and SoftHSM loaded in it, for a derived scalar, the PRF output it came
//! from, the audit key and the backing PIN. "Locked memory" is the arena
//! (told apart by its configured size) and the secret stacks computations
//! on keys run on; both must be locked in full, `dd`, and guarded.
//!
//! The test must not hold those secrets itself, or it would find its own
//! copies. So the root and the PIN are generated at run time by a Python
//! child and handed over in files (never literals, arguments or environment
//! of this process); the same child computes the secrets with the
//! independent implementation in `tools/vectors/gen_vectors.py` and prints
//! them XORed with a mask this test chose. The scanner compares memory with
//! `masked ^ mask` byte by byte, never building a needle, and wipes its read
//! buffer after every chunk. The PIN is read from its file into a buffer of
//! its exact size, passed to `C_Login` and wiped at once.

mod common;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::memscan::*;
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::UserType;
use cryptoki::types::RawAuthPin;

const ASSET: &str = "memory-probe";
/// An arena size no other mapping of the process has, to tell it apart.
const ARENA_KIB: usize = 72;
const PIN_LEN: usize = 16;

/// Writes a random root and PIN into `dir`, readable by the owner only.
const MAKE_SECRETS: &str = r#"
import os, secrets, sys
d = sys.argv[1]
for name, text in (("root.hex", os.urandom(32).hex()), ("pin", secrets.token_hex(8))):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
"#;

/// Prints each secret XOR the mask (hex): the scalar of ASSET version 1, its
/// PRF output (the PRK), the audit key and the PIN.
const MASKED_NEEDLES: &str = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import gen_vectors as g
d, asset, mask = sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
root = bytes.fromhex(open(os.path.join(d, "root.hex")).read())
pin = open(os.path.join(d, "pin"), "rb").read()
_, prk, attempts = g.derive(root, asset, 1, "secp256k1")
for name, secret in (("scalar", attempts[-1]), ("prf-output", prk),
                     ("audit-key", g.audit_key(root)), ("pin", pin)):
    print(name, bytes(a ^ b for a, b in zip(secret, mask)).hex())
"#;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A backing token whose PIN and root only files hold, a store with one
/// secp256k1 asset, and a config with a recognisable arena size.
fn prepare(dir: &Path) -> (String, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    run(
        Command::new("python3").args(["-c", MAKE_SECRETS]).arg(dir),
        "generating root and PIN",
    );
    let label = format!("memory-{}", std::process::id() % 100_000);
    run(
        Command::new("sh")
            .arg("-c")
            .arg(
                "softhsm2-util --init-token --free --label \"$1\" --pin \"$(cat \"$2\")\" \
                 --so-pin 87654321 >/dev/null",
            )
            .arg("sh")
            .arg(&label)
            .arg(dir.join("pin")),
        "softhsm2-util --init-token",
    );
    let config = dir.join("p11derive.toml");
    let text = config_text(&label, &dir.join("state.db"), &dir.join("p11derive.log"));
    std::fs::write(
        &config,
        format!("{text}\n[memory]\nlocked_kib = {ARENA_KIB}\n\n[cache]\nttl_seconds = 300\n"),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(cli_path());
        cmd.env("P11DERIVE_CONF", &config)
            .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
            .env_remove("P11DERIVE_PIN")
            .args(args)
            .arg("--pin-file")
            .arg(dir.join("pin"));
        cmd
    };
    let root = dir.join("root.hex");
    run(
        &mut cli(&["init", "--import-root", root.to_str().unwrap()]),
        "p11derive init",
    );
    run(
        &mut cli(&["asset", "create", ASSET, "--type", "secp256k1"]),
        "p11derive asset create",
    );
    (label, config)
}

fn needles(dir: &Path, mask: &[u8]) -> Vec<Needle> {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/vectors");
    let out = run(
        Command::new("python3")
            .args(["-c", MASKED_NEEDLES])
            .arg(vectors)
            .arg(dir)
            .arg(ASSET)
            .arg(hex(mask)),
        "computing the masked secrets",
    );
    let found = parse_needles(&out);
    assert_eq!(found.len(), 4, "{out}");
    assert_eq!(found[3].masked.len(), PIN_LEN);
    found
}

/// The PIN from its file, in a buffer of exactly its size (no reallocation
/// leaves a copy behind), wiped when dropped.
fn read_pin(dir: &Path) -> RawAuthPin {
    let mut pin = vec![0u8; PIN_LEN];
    File::open(dir.join("pin"))
        .unwrap()
        .read_exact(&mut pin)
        .unwrap();
    RawAuthPin::new(Box::new(pin))
}

/// Sets the key cache's lifetime in the config.
fn set_ttl(config: &Path, seconds: u64) {
    let text = std::fs::read_to_string(config).unwrap();
    let (head, _) = text.split_once("ttl_seconds = ").unwrap();
    std::fs::write(config, format!("{head}ttl_seconds = {seconds}\n")).unwrap();
}

/// One provider life: log in, sign on two threads while scanning, log out,
/// scan, finalize, scan. `ttl` 300 keeps the key cached (so the scalar must
/// be found, in the arena); 0 derives it through the HSM for every
/// signature, so the scans also catch what each derivation leaves behind.
fn life(dir: &Path, config: &Path, ttl: u64, needles: &[Needle], mask: &[u8]) {
    set_ttl(config, ttl);
    std::env::set_var("P11DERIVE_CONF", config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    {
        let pin = read_pin(dir);
        session
            .login_with_raw(UserType::User, &pin)
            .expect("C_Login");
    }
    let key = find_one(&session, ASSET, ObjectClass::PRIVATE_KEY).expect("the asset's key");

    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (ctx, stop, signed) = (ctx.clone(), stop.clone(), signed.clone());
            std::thread::spawn(move || {
                let s = ctx.open_rw_session(slot).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    s.sign(&Mechanism::EcdsaSha256, key, b"scan me").unwrap();
                    signed.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while signed.load(Ordering::SeqCst) < 10 {
        assert!(
            std::time::Instant::now() < deadline && !workers.iter().any(|w| w.is_finished()),
            "the signing loop did not start (or a signer failed)"
        );
        std::thread::yield_now();
    }
    let arena = locked(ARENA_KIB);
    // With the cache off every signature asks SoftHSM (loaded in this
    // process) for the PRF again, and SoftHSM holds its output in its own
    // heap buffer (wiped when freed) while it computes: the backing HSM's
    // memory, not p11derive's. So in that phase the PRF output is checked
    // only after logout, where it must be gone everywhere, SoftHSM included.
    let watched: &[&str] = if ttl > 0 {
        &["scalar", "prf-output", "audit-key", "pin"]
    } else {
        &["scalar", "audit-key", "pin"]
    };
    for round in 0..2 {
        let before = signed.load(Ordering::SeqCst);
        let hits = scan(needles, mask);
        assert!(
            signed.load(Ordering::SeqCst) > before,
            "round {round}: no signature was made while the memory was scanned"
        );
        for &name in watched {
            assert!(
                outside(&hits, name, &arena).is_empty(),
                "ttl {ttl}, round {round}: the {name} found outside locked memory at {:x?} \
                 (arena {:x?}, stacks {:x?}), in\n{}",
                outside(&hits, name, &arena),
                arena.arena,
                arena.stacks,
                where_(&outside(&hits, name, &arena))
            );
        }
        if ttl > 0 {
            assert!(
                count(&hits, "scalar") >= 1,
                "the cached scalar is in the arena"
            );
        }
        assert!(
            count(&hits, "audit-key") >= 1,
            "the audit key is in the arena"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    // After logout: no scalar, PRF output or PIN anywhere; the audit key
    // stays (records are chained until C_Finalize), in the arena only.
    session.logout().expect("C_Logout");
    let hits = scan(needles, mask);
    for name in ["scalar", "prf-output", "pin"] {
        assert_eq!(
            count(&hits, name),
            0,
            "ttl {ttl}: the {name} is still in memory after C_Logout at {:x?}",
            hits.iter().find(|h| h.name == name).unwrap().at
        );
    }
    assert!(outside(&hits, "audit-key", &arena).is_empty());

    // After C_Finalize: nothing at all, the audit key included.
    drop(session);
    ctx.finalize().expect("C_Finalize");
    for h in scan(needles, mask) {
        assert!(
            h.at.is_empty(),
            "ttl {ttl}: the {} is still in memory after C_Finalize at {:x?}",
            h.name,
            h.at
        );
    }
}

#[test]
fn secrets_are_found_only_in_the_arena_while_used_and_nowhere_after_logout() {
    let _turn = turn();
    let dir = softhsm_dir().join("memory");
    let (_label, config) = prepare(&dir);
    let mask = random(32);
    let needles = needles(&dir, &mask);
    for ttl in [300, 0] {
        life(&dir, &config, ttl, &needles, &mask);
    }
}
