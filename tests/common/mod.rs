//! Shared set-up for the integration tests: real SoftHSM tokens as the
//! backing HSM, a root imported through the `p11derive` CLI, a config file,
//! and the built provider loaded through a real client library.
#![allow(dead_code)]

pub mod archive;
pub mod hosts;
pub mod memscan;
pub mod metrics;
pub mod users;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub const PIN: &str = "123456";
pub const SO_PIN: &str = "87654321";
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[allow(unused_imports)]
pub use hosts::*;
#[allow(unused_imports)]
pub use users::*;

/// The provider keeps one state per process: tests that load it take turns.
static TURN: Mutex<()> = Mutex::new(());

pub fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The provider built for this test run: cargo writes the library's cdylib
/// beside the test executables (target/<profile>/deps); only `cargo build`
/// copies it up to target/<profile>, where it may be absent or stale.
pub fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let so = exe
        .parent()
        .expect("target/<profile>/deps")
        .join("libp11derive.so");
    assert!(so.exists(), "{} not built by this test run", so.display());
    so
}

pub fn cli_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p11derive"))
}

/// One SoftHSM token directory per test binary; SOFTHSM2_CONF points at it
/// before SoftHSM is first loaded.
pub fn softhsm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(SOFTHSM).exists(),
            "SoftHSM missing: run tools/setup.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("p11derive-test-")
            .tempdir()
            .expect("temp dir")
            .keep();
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        std::fs::write(
            dir.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        dir
    })
}

/// A backing token with a root, a store and a config that points at both.
pub struct Setup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub store: PathBuf,
    pub token_label: String,
}

static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// The directories of this process's SoftHSM tokens labelled `label`.
pub fn token_dirs(label: &str) -> Vec<PathBuf> {
    let padded = format!("{label:<32}");
    std::fs::read_dir(softhsm_dir().join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| {
            std::fs::read(d.join("token.object"))
                .is_ok_and(|b| b.windows(padded.len()).any(|w| w == padded.as_bytes()))
        })
        .collect()
}

/// A fresh backing token; `root` is imported through `p11derive init
/// --import-root`, or generated inside SoftHSM when `None`. `init` false
/// leaves the token without root and store.
pub fn setup_with(root: Option<&[u8; 32]>, init: bool) -> Setup {
    let base = softhsm_dir();
    let n = SERIAL.fetch_add(1, Ordering::SeqCst);
    let token_label = format!("backing-{}-{n}", std::process::id() % 100_000);
    let dir = base.join(format!("setup-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    // SoftHSM's file-backed slots can be caught mid-write by a concurrent
    // test (another token being created): "Could not get info about the
    // token in slot N". Such a scan is tried again, a few times.
    let init_token = || {
        Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &token_label,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("softhsm2-util runs")
    };
    let mut out = init_token();
    for _ in 0..5 {
        let raced = String::from_utf8_lossy(&out.stderr).contains("Could not get info");
        if out.status.success() || !raced {
            break;
        }
        // The scan that failed may have come after the token was made
        // (softhsm2-util looks for its slot again): then it is there, and a
        // second try would make a second token of the same label.
        if token_dirs(&token_label).len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = init_token();
    }
    assert!(
        out.status.success() || token_dirs(&token_label).len() == 1,
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = dir.join("state.db");
    let config = dir.join("p11derive.toml");
    std::fs::write(
        &config,
        config_text(&token_label, &store, &dir.join("p11derive.log")),
    )
    .unwrap();
    let setup = Setup {
        dir,
        config,
        store,
        token_label,
    };
    if init {
        let mut cmd = setup.cli();
        cmd.arg("init");
        if let Some(root) = root {
            let file = setup.dir.join("root.hex");
            std::fs::write(&file, hex(root)).unwrap();
            cmd.arg("--import-root").arg(&file);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "p11derive init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    setup
}

pub fn setup(root: Option<&[u8; 32]>) -> Setup {
    setup_with(root, true)
}

/// (No automatic checkpoints: a test's `audit verify` appends nothing
/// unless it sets `[audit] checkpoint_interval_s`, as tests/checkpoint.rs does.)
pub fn config_text(token_label: &str, store: &Path, log: &Path) -> String {
    format!(
        "[token]\nlabel = \"p11derive\"\n\n[backend]\nmodule = \"{SOFTHSM}\"\n\
         token_label = \"{token_label}\"\nroot_label = \"p11derive-root\"\n\n\
         [store]\npath = \"{}\"\n\n[log]\nfile = \"{}\"\nlevel = \"debug\"\n\n\
         [audit]\ncheckpoint_interval_s = 0\n",
        store.display(),
        log.display()
    )
}

impl Setup {
    /// The CLI with this setup's config and PIN.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(cli_path());
        cmd.env("P11DERIVE_CONF", &self.config)
            .env("P11DERIVE_PIN", PIN)
            .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"));
        cmd
    }

    /// Loads and initializes the provider with this setup's config.
    pub fn load(&self) -> Provider {
        std::env::set_var("P11DERIVE_CONF", &self.config);
        let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = ctx.get_slots_with_token().expect("slots")[0];
        Provider { ctx, slot }
    }

    /// Creates an asset through the CLI (`p11derive asset create ID --type KT`).
    pub fn create_asset(&self, id: &str, key_type: &str) {
        let out = self
            .cli()
            .args(["asset", "create", id, "--type", key_type])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "asset create {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("p11derive.log")).unwrap_or_default()
    }

    /// The log written since it was `from` bytes long (`log().len()`).
    pub fn log_since(&self, from: usize) -> String {
        self.log().get(from..).unwrap_or_default().to_string()
    }

    /// The count logged right after `label` in the newest log line that has
    /// it, such as the counts of the provider's finalize line ("keys derived
    /// through the backing HSM: ", "(rollback anchor: ").
    pub fn last_logged_count(&self, label: &str) -> u64 {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no log line has {label:?}"));
        let after = line.split(label).nth(1).unwrap();
        let digits = after.split(|c: char| !c.is_ascii_digit()).next().unwrap();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("no count after {label:?} ({e}): {line}"))
    }

    /// `p11derive asset show NAME --json`, which must succeed.
    pub fn asset_show(&self, name: &str) -> serde_json::Value {
        let out = cli(self, &["asset", "show", name, "--json"]);
        assert!(
            out.status.success(),
            "asset show {name}: {}",
            output_text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `p11derive audit verify`, which must pass; what it printed.
    pub fn audit_verifies(&self) -> String {
        let out = cli(self, &["audit", "verify"]);
        assert!(out.status.success(), "audit verify: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every record `p11derive audit export ARGS` prints (a JSON object a line).
    pub fn audit_records(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self
            .cli()
            .args(["audit", "export"])
            .args(args)
            .output()
            .expect("p11derive runs");
        assert!(out.status.success(), "audit export: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// How many signatures `audit export ARGS` records as made (a record
    /// written twice counts twice, where `signed_inputs` would not tell).
    pub fn signed_count(&self, args: &[&str]) -> usize {
        self.audit_records(args)
            .iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .count()
    }

    /// The `input_sha256` (`sha256_hex` of the data passed to C_Sign) of
    /// every signature the audit log records as made (`audit export ARGS`).
    pub fn signed_inputs(&self, args: &[&str]) -> HashSet<String> {
        self.audit_records(args)
            .iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .map(|r| {
                r["input_sha256"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a sign record without input_sha256: {r}"))
                    .to_string()
            })
            .collect()
    }
}

/// Runs `sql` on a SQLite store with the `sqlite3` shell, as someone with
/// only the file would; it must succeed.
pub fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A consistent copy of the store, as a backup tool would take it.
pub fn backup(store: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    sqlite(store, &format!(".backup '{}'", to.display()));
}

/// Runs the CLI, which must succeed.
pub fn ok(s: &Setup, args: &[&str]) {
    let out = cli(s, args);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
}

/// Signs 32 bytes with the private key labelled `label` (CKM_ECDSA): the
/// signature, or the refusal's code (`KeyHandleInvalid` when the key is not
/// listed, or a listing refused).
pub fn try_sign(session: &Session, label: &str) -> Result<Vec<u8>, cryptoki::error::RvError> {
    use cryptoki::error::RvError;
    use cryptoki::object::Attribute;
    let rv = |e: cryptoki::error::Error| rv_code(&e).unwrap_or(RvError::GeneralError);
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(rv)?;
    let Some(key) = found.first() else {
        return Err(RvError::KeyHandleInvalid);
    };
    session
        .sign(&cryptoki::mechanism::Mechanism::Ecdsa, *key, &[7u8; 32])
        .map_err(rv)
}

/// Runs the CLI with this setup's config and PIN.
pub fn cli(s: &Setup, args: &[&str]) -> Output {
    s.cli().args(args).output().expect("p11derive runs")
}

/// What a CLI run wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A CLI run's exit code and output, for a failure message.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (version, public key point) of each version in `asset show --json` output.
pub fn version_keys(shown: &serde_json::Value) -> Vec<(u64, Vec<u8>)> {
    shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                unhex(v["public_key"].as_str().unwrap()),
            )
        })
        .collect()
}

pub struct Provider {
    pub ctx: Pkcs11,
    pub slot: Slot,
}

impl Provider {
    pub fn session(&self) -> Session {
        self.ctx.open_rw_session(self.slot).expect("C_OpenSession")
    }

    pub fn user_session(&self) -> Session {
        let s = self.session();
        s.login(UserType::User, Some(&AuthPin::from(PIN)))
            .expect("C_Login");
        s
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // cryptoki does not finalize on drop; the next test initializes afresh.
        let _ = self.ctx.clone().finalize();
    }
}

/// The one object with this label and class, if any.
pub fn find_one(session: &Session, label: &str, class: ObjectClass) -> Option<ObjectHandle> {
    use cryptoki::object::Attribute;
    let found = session
        .find_objects(&[
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Class(class),
        ])
        .expect("C_FindObjects");
    assert!(found.len() <= 1, "{label}: {found:?}");
    found.first().copied()
}

/// The private key with this label, which must exist.
pub fn private_key(session: &Session, label: &str) -> ObjectHandle {
    find_one(session, label, ObjectClass::PRIVATE_KEY).unwrap_or_else(|| panic!("no key {label}"))
}

/// Whether `sig` (r || s) is an ECDSA signature of `digest` by the public
/// key `point` (SEC1) of type `key_type` ("secp256k1" or "p256"), checked
/// with the k256 and p256 crates, not the provider's code; a secp256k1
/// signature may have a high s.
pub fn ecdsa_verifies(key_type: &str, point: &[u8], digest: &[u8; 32], sig: &[u8]) -> bool {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    match key_type {
        "secp256k1" => {
            let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            k256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify_prehash(digest, &s.normalize_s()).is_ok())
        }
        "p256" => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
        }
        "p384" => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            p384::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
        }
        "p521" => {
            let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            p521::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
        }
        other => panic!("{other}"),
    }
}

/// The SHA-256 of `data`, in hex (as the audit records' `input_sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// This test executable's file name: what `[gcm] short_tag_clients`
/// matches (with `/proc/self/comm`).
pub fn own_name() -> String {
    std::env::current_exe()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The return code of a failed cryptoki call.
pub fn rv_of<T: std::fmt::Debug>(r: cryptoki::error::Result<T>) -> cryptoki::error::RvError {
    match r {
        Err(cryptoki::error::Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// The provider's 3.0 function table, found through C_GetInterface.
pub struct Raw {
    _lib: libloading::Library,
    pub f: &'static cryptoki_sys::CK_FUNCTION_LIST_3_0,
}

pub fn raw() -> Raw {
    use cryptoki_sys::*;
    use std::ptr;
    // SAFETY: loading the provider under test.
    let lib = unsafe { libloading::Library::new(module_path()) }.unwrap();
    let f = {
        // SAFETY: C_GetInterface has this signature (PKCS#11 3.0).
        let get: libloading::Symbol<
            unsafe extern "C" fn(
                *mut CK_UTF8CHAR,
                *mut CK_VERSION,
                *mut *mut CK_INTERFACE,
                CK_FLAGS,
            ) -> CK_RV,
        > = unsafe { lib.get(b"C_GetInterface\0") }.unwrap();
        let mut iface: *mut CK_INTERFACE = ptr::null_mut();
        // SAFETY: valid out-pointer.
        let rv = unsafe { get(ptr::null_mut(), ptr::null_mut(), &mut iface, 0) };
        assert_eq!(rv, CKR_OK);
        // SAFETY: the default interface is the 3.0 table, which lives as long as the library.
        unsafe { &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0) }
    };
    Raw { _lib: lib, f }
}

#[allow(unused_macros)]
macro_rules! call {
    ($raw:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        // SAFETY: the test passes arguments valid for the call.
        unsafe { ($raw.f.$f.expect(stringify!($f)))($($a),*) }
    };
}
#[allow(unused_imports)]
pub(crate) use call;

/// A watchdog for tests that could hang: threads announce each step they
/// take (`Watched::step`), and when one step lasts longer than the limit the
/// watchdog prints every watched thread's current step and, where gdb is
/// installed, every thread's stack, then aborts the process. Its report goes
/// straight to the process's stderr, past the test harness's capture, which
/// an abort would lose.
pub struct Watchdog {
    state: std::sync::Arc<WatchState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WatchState {
    slots: Mutex<Vec<WatchSlot>>,
    done: std::sync::atomic::AtomicBool,
}

struct WatchSlot {
    name: String,
    doing: Option<(String, std::time::Instant)>,
    steps: u64,
}

/// One watched thread.
#[derive(Clone)]
pub struct Watched {
    state: std::sync::Arc<WatchState>,
    index: usize,
}

impl Watchdog {
    pub fn start(limit: std::time::Duration) -> Watchdog {
        let state = std::sync::Arc::new(WatchState {
            slots: Mutex::new(Vec::new()),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        let watched = state.clone();
        let thread = std::thread::spawn(move || {
            while !watched.done.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let report = {
                    let slots = watched.slots.lock().unwrap_or_else(|e| e.into_inner());
                    let stuck = slots.iter().any(|s| {
                        s.doing
                            .as_ref()
                            .is_some_and(|(_, since)| since.elapsed() > limit)
                    });
                    stuck.then(|| {
                        let mut r = format!(
                            "\nWATCHDOG: a step has lasted longer than {limit:?}; every watched \
                             thread:\n"
                        );
                        for s in slots.iter() {
                            match &s.doing {
                                Some((what, since)) => r.push_str(&format!(
                                    "  {:<24} in {what} for {:?} (after {} steps)\n",
                                    s.name,
                                    since.elapsed(),
                                    s.steps
                                )),
                                None => r.push_str(&format!(
                                    "  {:<24} between steps (after {} steps)\n",
                                    s.name, s.steps
                                )),
                            }
                        }
                        r
                    })
                };
                if let Some(report) = report {
                    watchdog_abort(&report);
                }
            }
        });
        Watchdog {
            state,
            thread: Some(thread),
        }
    }

    pub fn watch(&self, name: impl Into<String>) -> Watched {
        let mut slots = self.state.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.push(WatchSlot {
            name: name.into(),
            doing: None,
            steps: 0,
        });
        Watched {
            state: self.state.clone(),
            index: slots.len() - 1,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watched {
    /// Runs `f` as the step `what` of this thread.
    pub fn step<T>(&self, what: impl Into<String>, f: impl FnOnce() -> T) -> T {
        self.set(Some((what.into(), std::time::Instant::now())));
        let out = f();
        self.set(None);
        out
    }

    fn set(&self, doing: Option<(String, std::time::Instant)>) {
        let mut slots = self.state.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[self.index];
        if doing.is_none() {
            slot.steps += 1;
        }
        slot.doing = doing;
    }
}

/// Prints `report` and every thread's stack (gdb, when installed), then
/// aborts: a hung test must end, and say where it hung.
fn watchdog_abort(report: &str) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().write_all(report.as_bytes());
    let gdb = Command::new("gdb")
        .args(["-p", &std::process::id().to_string(), "-batch", "-nx"])
        .args(["-ex", "thread apply all bt 30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .spawn();
    match gdb {
        Ok(mut child) => {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "WATCHDOG: no stacks (gdb: {e})");
        }
    }
    let _ = writeln!(std::io::stderr(), "WATCHDOG: aborting the test process");
    std::process::abort()
}

/// The return code of a failed cryptoki call, or what else went wrong.
pub fn rv_code(e: &cryptoki::error::Error) -> Result<cryptoki::error::RvError, String> {
    match e {
        cryptoki::error::Error::Pkcs11(rv, _) => Ok(*rv),
        other => Err(other.to_string()),
    }
}

/// Whether `text` holds the PIN as a value of its own (not inside a longer
/// run of digits or hex, such as a hash or a count).
pub fn mentions_pin(text: &str) -> bool {
    text.match_indices(PIN).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + PIN.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// In a forked child: the provider loaded and initialized afresh (with
/// `$P11DERIVE_CONF`), and a user session; errors as text for the parent.
pub fn child_session() -> Result<(Pkcs11, Session), String> {
    child_session_as(PIN)
}

/// `child_session` logged in with `pin` (in users mode, `name:secret`).
pub fn child_session_as(pin: &str) -> Result<(Pkcs11, Session), String> {
    let ctx = Pkcs11::new(module_path()).map_err(|e| e.to_string())?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| e.to_string())?;
    let slot = ctx.get_slots_with_token().map_err(|e| e.to_string())?[0];
    let session = ctx.open_rw_session(slot).map_err(|e| e.to_string())?;
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .map_err(|e| e.to_string())?;
    Ok((ctx, session))
}

/// Forks a child that runs `run` (typically its own provider, through
/// `child_session`), writes what it returns — or `error …`, also for a panic
/// — to `out`, and `_exit`s 0 (or 1) without the parent's destructors.
pub fn fork_child(out: &Path, run: impl FnOnce() -> Result<String, String>) -> libc::pid_t {
    // SAFETY: the child runs only the provider and its own code, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid > 0 {
        return pid;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|p| Err(format!("panic: {:?}", p.downcast_ref::<String>())));
    let code = match outcome {
        Ok(text) => i32::from(std::fs::write(out, text).is_err()),
        Err(e) => {
            let _ = std::fs::write(out, format!("error {e}\n"));
            1
        }
    };
    // SAFETY: leave the child without the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// Waits for a `fork_child`, which must have exited 0; what it wrote.
pub fn reap(pid: libc::pid_t, out: &Path, who: &str) -> String {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{who} (pid {pid}) failed (status {status}): {}",
        text.lines().next().unwrap_or("no output")
    );
    text
}

/// The test PostgreSQL server's admin URL: `$P11DERIVE_TEST_PG`, else the
/// private server `tools/pg.sh` starts (or finds running) on loopback.
pub fn pg_admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("P11DERIVE_TEST_PG") {
            return url;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pg.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .output()
            .expect("tools/pg.sh runs");
        assert!(
            out.status.success(),
            "tools/pg.sh start (PostgreSQL for the tests): {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// A new, empty database on the test server, owned by the unprivileged role
/// `p11derive`; its URL (password included).
/// The row id of asset `name` in `store`.
pub fn asset_rowid(store: &p11derive::store::Store, name: &str) -> i64 {
    store
        .all_assets()
        .unwrap()
        .into_iter()
        .find(|a| a.id.as_str() == name)
        .expect("the asset")
        .rowid
}

/// A setup on a fresh PostgreSQL database `name`, initialized under
/// `root` (imported, so a test holds the audit key without the token).
pub fn pg_setup_with_root(name: &str, root: &[u8; 32]) -> Setup {
    let url = pg_database(&pg_admin_url(), name);
    let s = setup_with(None, false);
    s.use_pg(&url);
    let file = s.dir.join("root.hex");
    std::fs::write(&file, hex(root)).unwrap();
    ok(&s, &["init", "--import-root", file.to_str().unwrap()]);
    s
}

pub fn pg_database(admin: &str, name: &str) -> String {
    let mut c = postgres::Client::connect(admin, postgres::NoTls).expect("connect as admin");
    let (_, rest) = admin.split_once('@').expect("admin URL with a password");
    pg_database_with(&mut c, rest.split('/').next().unwrap(), name)
}

/// `pg_database` over an administrator's connection `c` to the server at
/// `host` (HOST:PORT, as the URL returned names it).
pub fn pg_database_with(c: &mut postgres::Client, host: &str, name: &str) -> String {
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'p11derive') THEN
             CREATE ROLE p11derive LOGIN PASSWORD 'p11derive-test';
           END IF;
         END $$;",
    )
    .expect("role p11derive");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .expect("drop the test database");
    c.batch_execute(&format!("CREATE DATABASE {name} OWNER p11derive"))
        .expect("create the test database");
    format!("postgres://p11derive:p11derive-test@{host}/{name}")
}

impl Setup {
    /// Points this setup's config at a PostgreSQL store (`[store] url`).
    pub fn use_pg(&self, url: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("[store]\n", &format!("[store]\nurl = \"{url}\"\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Lists `names` in `[gcm] short_tag_clients` (executables allowed GCM
    /// tags under 96 bits).
    pub fn allow_short_tags(&self, names: &[&str]) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[gcm]\nshort_tag_clients = [{}]\n",
            quoted.join(", ")
        ));
        std::fs::write(&self.config, text).unwrap();
    }

    /// `p11derive init` with a generated root, which must succeed.
    pub fn init(&self) {
        let out = cli(self, &["init"]);
        assert!(
            out.status.success(),
            "p11derive init: {}",
            output_text(&out)
        );
    }

    /// A second config for the same backing token and store, with its own
    /// log: another host.
    pub fn another_host(&self, name: &str) -> Setup {
        let config = self.dir.join(format!("{name}.toml"));
        let log = self.dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&self.config).unwrap();
        let old_log = self.dir.join("p11derive.log");
        let text = text.replace(
            &format!("file = \"{}\"", old_log.display()),
            &format!("file = \"{}\"", log.display()),
        );
        std::fs::write(&config, text).unwrap();
        Setup {
            dir: self.dir.clone(),
            config,
            store: self.store.clone(),
            token_label: self.token_label.clone(),
        }
    }
}

/// pkcs11-tool -L through the provider with RLIMIT_MEMLOCK `bytes`, as root
/// without CAP_IPC_LOCK (which would lock past the limit), so that locking
/// memory really fails past it.
pub fn list_with_memlock(s: &Setup, bytes: u64) -> Output {
    Command::new("prlimit")
        .arg(format!("--memlock={bytes}:{bytes}"))
        .args([
            "setpriv",
            "--bounding-set",
            "-ipc_lock",
            "pkcs11-tool",
            "--module",
        ])
        .arg(module_path())
        .arg("-L")
        .env("P11DERIVE_CONF", &s.config)
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .output()
        .expect("prlimit and setpriv (util-linux) run")
}

/// Runs the CLI on a pseudo-terminal (python3's pty), types `typed` when
/// it asks, and returns (exit code, everything the terminal showed).
pub fn on_terminal(s: &Setup, args: &[&str], typed: &str) -> (i32, String) {
    let script = r#"
import os, pty, sys, time
args, typed = sys.argv[2:], sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen = b""
deadline = time.time() + 60
while b"PIN" not in seen and time.time() < deadline:
    try:
        seen += os.read(fd, 1024)
    except OSError:
        break
os.write(fd, typed.encode())
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
try:
    import termios
    echo = termios.tcgetattr(fd)[3] & termios.ECHO
    seen += b"\n[echo on]" if echo else b"\n[echo off]"
except Exception:
    pass
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(typed)
        .arg(cli_path())
        .args(args);
    cmd.env("P11DERIVE_CONF", &s.config)
        .env_remove("P11DERIVE_PIN")
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"));
    let o = cmd.output().expect("python3 runs");
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
    )
}
