//! What a user meets: a store read by a user who may only read it, permission errors naming path and user, config, backend and memory messages.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::config::Config;
use p11derive::store::{parse_transition_detail, AssetState, Store, StoreError};

use common::*;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// Runs `f` on a thread of its own whose effective user and group are
/// nobody's, without supplementary groups: Linux keeps credentials per
/// thread, and the raw system calls (unlike libc's wrappers) change only the
/// calling thread's. The thread ends with `f`, and its credentials with it.
fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "these tests change users: run them as root"
    );
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let keep = -1i64 as libc::c_long;
            // SAFETY: raw credential calls with plain integer arguments (and
            // a null list for no groups); they affect this thread alone.
            let rc = unsafe {
                (
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                    libc::syscall(libc::SYS_setresgid, keep, NOGROUP as libc::c_long, keep),
                    libc::syscall(libc::SYS_setresuid, keep, NOBODY as libc::c_long, keep),
                )
            };
            assert_eq!(rc, (0, 0, 0), "cannot become nobody");
            f()
        })
        .join()
        .expect("the thread run as nobody")
    })
}

/// A directory under /tmp everyone may enter (the tests' SoftHSM directory
/// is private to root).
fn public_dir(name: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("p11derive-{name}-"))
        .tempdir()
        .unwrap()
        .keep();
    chmod(&dir, 0o755);
    dir
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn side(store: &Path, ext: &str) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

/// Everything the read commands read from a store, as one comparable text;
/// with the audit key, the checks they make too (root, anchor, seals).
fn read_everything(store: &Store, key: Option<&(Backend, p11derive::types::Secret32)>) -> String {
    let assets = store.list_assets().unwrap();
    let mut out = String::new();
    for a in &assets {
        let again = store.asset_by_name(&a.id).unwrap().unwrap();
        assert_eq!(again.rowid, a.rowid);
        let history = store.history(a.rowid).unwrap();
        out += &format!(
            "{} {:?} {}..{} {:?} versions {}\n",
            a.id.as_str(),
            a.key_type,
            a.min_usable,
            a.current,
            a.state,
            history.len()
        );
    }
    let rows = store.audit_rows(0).unwrap();
    let head = store.audit_head().unwrap().unwrap();
    assert_eq!(rows.last().unwrap().0.seq, head.0);
    out += &format!(
        "records {} head {} store {:?} lanes {} pending {}\n",
        rows.len(),
        head.0,
        store.store_id().unwrap(),
        store.lane_rows().unwrap().len(),
        store.pending_rows().unwrap().len()
    );
    if let Some((backend, ak)) = key {
        store.check_root(ak).unwrap();
        let anchor = backend.read_anchor().unwrap();
        store.authenticate(ak, anchor.as_ref()).unwrap();
        if let Some(a) = &anchor {
            store.check_anchor(a).unwrap();
        }
        // Each asset's latest state change, as `audit verify` expects it.
        let mut latest = BTreeMap::new();
        for (r, _) in &rows {
            let Some(name) = &r.asset else { continue };
            match r.event {
                Event::Create => {
                    latest.insert(name.clone(), (r.seq, AssetState::Active, 1, 1));
                }
                Event::Transition => {
                    let (state, current, min) = parse_transition_detail(&r.detail).unwrap();
                    latest.insert(name.clone(), (r.seq, state, current, min));
                }
                _ => {}
            }
        }
        assert_eq!(
            store.seal_faults(ak, &latest).unwrap(),
            Vec::<String>::new()
        );
        out += "checks pass\n";
    }
    out
}

fn keyed(s: &Setup) -> (Backend, p11derive::types::Secret32) {
    let config = Config::load(&s.config).unwrap();
    let backend = Backend::open(&config.backend, &config.source).unwrap();
    backend
        .login(cryptoki_sys::CKU_USER, PIN.as_bytes())
        .unwrap();
    let ak = p11derive::derive::audit_key(&backend).unwrap();
    (backend, ak)
}

/// A fresh store with an EC and an AES asset and a rotation, copied into a
/// directory everyone may enter (with no writer holding it: no -wal).
fn populated(name: &str) -> (Setup, PathBuf) {
    let s = setup(None);
    s.create_asset("ec", "secp256k1");
    s.create_asset("aes", "aes256");
    ok(&s, &["asset", "rotate", "ec", "--grace"]);
    assert!(!side(&s.store, "-wal").exists());
    let dir = public_dir(name);
    let store = dir.join("state.db");
    std::fs::copy(&s.store, &store).unwrap();
    chmod(&store, 0o644);
    (s, store)
}

fn fingerprint(p: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(p).unwrap(),
        std::fs::metadata(p).unwrap().modified().unwrap(),
    )
}

#[test]
fn a_read_only_store_is_read_whole_and_never_written() {
    let _turn = turn();
    let (s, store) = populated("ro");
    let key = keyed(&s);
    let expected = {
        let rw = Store::open(&store).unwrap();
        read_everything(&rw, Some(&key))
    };
    assert!(!side(&store, "-wal").exists(), "the writer left a -wal");
    assert!(
        expected.contains("ec Secp256k1 1..2 Rotating versions 2"),
        "{expected}"
    );
    let dir = store.parent().unwrap().to_path_buf();
    chmod(&store, 0o444);
    chmod(&dir, 0o555);
    let before = fingerprint(&store);
    let seen = as_nobody(|| {
        let ro = Store::open_read_only(&store).unwrap();
        assert!(ro.is_read_only());
        let seen = read_everything(&ro, Some(&key));
        // A write is refused before SQLite is asked, naming the store.
        let e = ro
            .record(None, Record::new(Event::Login, 0).detail("test"))
            .unwrap_err();
        assert!(matches!(e, StoreError::OpenedReadOnly(_)), "{e}");
        // Opening it to write says who may not, and that reading works.
        let e = Store::open(&store).err().unwrap().to_string();
        assert!(
            e.contains(&format!("store {} is read-only for user nobody, uid 65534", store.display()))
                && e.contains("read and write access to the file and write access to its directory")
                && e.contains("read-only commands (asset list/show/pubkey, audit export/tail/verify, status, verify) still work"),
            "{e}"
        );
        seen
    });
    // SoftHSM, initialized once per process, would not see later tokens.
    key.0.finalize();
    assert_eq!(seen, expected);
    assert_eq!(fingerprint(&store), before, "the store file changed");
    for ext in ["-wal", "-shm", "-journal"] {
        assert!(!side(&store, ext).exists(), "{ext} was created");
    }
    chmod(&dir, 0o755);
}

/// While a writer (another process) holds the store open, its newest
/// changes are in the -wal: a reader who may not write the directory or the
/// -shm still sees them.
#[test]
fn a_reader_sees_what_a_running_writer_committed() {
    let _turn = turn();
    let (_s, store) = populated("wal");
    let dir = store.parent().unwrap().to_path_buf();
    let ready = dir.join("ready");
    let stop = dir.join("stop");
    let mut writer = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_the_store_open", "--ignored", "--nocapture"])
        .env("P11DERIVE_TEST_HOLD", &store)
        .spawn()
        .unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < limit, "the writer never got ready");
        assert!(writer.try_wait().unwrap().is_none(), "the writer ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::metadata(side(&store, "-wal")).unwrap().len() > 0);
    for f in [store.clone(), side(&store, "-wal"), side(&store, "-shm")] {
        chmod(&f, 0o644);
    }
    chmod(&dir, 0o555);
    let pending = as_nobody(|| {
        let ro = Store::open_read_only(&store).unwrap();
        ro.pending_rows().unwrap()
    });
    chmod(&dir, 0o755);
    std::fs::write(&stop, b"").unwrap();
    assert!(writer.wait().unwrap().success());
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].detail, "held open by a test");
}

/// Not a test of its own: the writer process `a_reader_sees_what_a_running_writer_committed`
/// starts.
#[test]
#[ignore]
fn hold_the_store_open() {
    let Some(path) = std::env::var_os("P11DERIVE_TEST_HOLD") else {
        return;
    };
    let path = PathBuf::from(path);
    let store = Store::open(&path).unwrap();
    store
        .record(
            None,
            Record::new(Event::Login, 0).detail("held open by a test"),
        )
        .unwrap();
    let dir = path.parent().unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while !dir.join("stop").exists() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_store_the_user_may_not_read_says_permission_denied_and_who() {
    let _turn = turn();
    let (_s, store) = populated("denied");
    chmod(&store, 0o600);
    let (ro, rw) = as_nobody(|| {
        (
            Store::open_read_only(&store).err().unwrap().to_string(),
            Store::open(&store).err().unwrap().to_string(),
        )
    });
    let head = format!(
        "permission denied: {} (user nobody, uid 65534)",
        store.display()
    );
    assert!(
        ro.starts_with(&head) && ro.contains("need read access to the store file"),
        "{ro}"
    );
    assert!(
        rw.starts_with(&head)
            && rw.contains(
                "need read and write access to the file and write access to its directory"
            )
            && rw.contains("need read access only"),
        "{rw}"
    );
    assert!(!ro.contains("unable to open database file"), "{ro}");
    // A directory the user may not enter hides the file: still denied, not "does not exist".
    let dir = store.parent().unwrap().to_path_buf();
    chmod(&store, 0o644);
    chmod(&dir, 0o700);
    let e = as_nobody(|| Store::open_read_only(&store).err().unwrap().to_string());
    chmod(&dir, 0o755);
    assert!(e.starts_with(&head), "{e}");
}

/// A config and store an auditor (nobody) may read, for the CLI.
fn auditor_config(s: &Setup, store: &Path) -> PathBuf {
    let dir = store.parent().unwrap();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.store.display().to_string(), &store.display().to_string())
        .replace(
            &format!("file = \"{}\"\n", s.dir.join("p11derive.log").display()),
            "",
        );
    let config = dir.join("p11derive.toml");
    std::fs::write(&config, text).unwrap();
    chmod(&config, 0o644);
    config
}

fn as_auditor(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(cli_path())
        .args(args)
        .env("P11DERIVE_CONF", config)
        .env_remove("P11DERIVE_PIN")
        .output()
        .unwrap()
}

/// Passes once the CLI opens the store with `Store::open_config_read_only`
/// for its read commands.
#[test]
fn the_cli_lists_assets_of_a_store_its_user_may_only_read() {
    let _turn = turn();
    let (s, store) = populated("cli");
    let config = auditor_config(&s, &store);
    let dir = store.parent().unwrap().to_path_buf();
    chmod(&store, 0o444);
    chmod(&dir, 0o555);
    let before = fingerprint(&store);
    let list = as_auditor(&config, &["asset", "list", "--json"]);
    let export = as_auditor(&config, &["audit", "export"]);
    chmod(&dir, 0o755);
    assert!(list.status.success(), "asset list: {}", stderr(&list));
    let json: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");
    assert!(export.status.success(), "audit export: {}", stderr(&export));
    assert!(String::from_utf8_lossy(&export.stdout).lines().count() >= 4);
    assert_eq!(fingerprint(&store), before, "the store file changed");
}

#[test]
fn the_cli_says_permission_denied_with_the_user() {
    let _turn = turn();
    let (s, store) = populated("cli-denied");
    let config = auditor_config(&s, &store);
    chmod(&store, 0o600);
    let out = as_auditor(&config, &["asset", "list"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "permission denied: {} (user nobody, uid 65534)",
            store.display()
        )),
        "{e}"
    );
}

/// The CLI with `args` and the environment given, no config of a setup.
fn cli_with(env: &[(&str, &Path)], args: &[&str]) -> String {
    let mut cmd = Command::new(cli_path());
    cmd.env_remove("P11DERIVE_CONF").env_remove("P11DERIVE_PIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn config_errors_keep_tomls_caret_name_the_table_and_follow_the_path_given() {
    let dir = public_dir("config");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[backend]\nmodule = \"/m.so\"\ntoken_label = \"t\nroot_label = 3\n",
    )
    .unwrap();
    let e = cli_with(&[], &["--config", bad.to_str().unwrap(), "asset", "list"]);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines[0],
        format!("p11derive: config file {} is invalid:", bad.display()),
        "{e}"
    );
    assert!(
        lines[1].starts_with("TOML parse error at line 3, column "),
        "{e}"
    );
    assert_eq!(lines[3], "3 | token_label = \"t", "{e}");
    assert!(
        lines[4].starts_with("  |") && lines[4].ends_with('^'),
        "{e}"
    );

    let no_backend = dir.join("no-backend.toml");
    std::fs::write(&no_backend, "[store]\npath = \"/tmp/x.db\"\n").unwrap();
    let e = cli_with(
        &[],
        &["--config", no_backend.to_str().unwrap(), "asset", "list"],
    );
    assert!(e.contains("the [backend] table is missing"), "{e}");
    assert!(
        e.contains("\n[backend]\nmodule = ") && !e.contains("line 1, column 1"),
        "{e}"
    );

    let absent = dir.join("absent.toml");
    let e = cli_with(
        &[],
        &["--config", absent.to_str().unwrap(), "asset", "list"],
    );
    assert!(
        e.contains("(given with --config)") && e.contains("fix the path given to --config"),
        "{e}"
    );
    assert!(!e.contains("P11DERIVE_CONF"), "{e}");
    let e = cli_with(&[("P11DERIVE_CONF", &absent)], &["asset", "list"]);
    assert!(
        e.contains("(named by P11DERIVE_CONF)")
            && e.contains("point P11DERIVE_CONF at the right file"),
        "{e}"
    );
}

fn backend_config(module: &Path, token_label: &str) -> Config {
    let text = format!(
        "[backend]\nmodule = \"{}\"\ntoken_label = \"{token_label}\"\n",
        module.display()
    );
    Config::parse(&text, Path::new("/etc/p11derive/test.toml")).unwrap()
}

fn backend_error(module: &Path, token_label: &str) -> String {
    let c = backend_config(module, token_label);
    Backend::open(&c.backend, &c.source)
        .err()
        .unwrap()
        .to_string()
}

#[test]
fn a_module_that_does_not_load_says_dlerrors_reason_and_the_fix() {
    let dir = public_dir("module");
    let absent = dir.join("libabsent.so");
    let e = backend_error(&absent, "t");
    assert!(
        e.starts_with(&format!(
            "cannot load the backing PKCS#11 module {}: cannot open shared object file: No such \
             file or directory; no such file: install the module",
            absent.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("[backend] module is set in /etc/p11derive/test.toml"),
        "{e}"
    );
    // A 32-bit ELF header: the loader refuses it for its class.
    let elf32 = dir.join("libelf32.so");
    let mut header = vec![0u8; 64];
    header[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    std::fs::write(&elf32, &header).unwrap();
    let e = backend_error(&elf32, "t");
    assert!(e.contains("wrong ELF class: ELFCLASS32"), "{e}");
    assert!(e.contains("built for another word size"), "{e}");
    let text = dir.join("libtext.so");
    std::fs::write(&text, vec![b'x'; 100]).unwrap();
    let e = backend_error(&text, "t");
    assert!(
        e.contains("invalid ELF header") && e.contains("not a shared library"),
        "{e}"
    );
    assert!(!e.contains("dlopen failed"), "{e}");
    // A shared library that is no PKCS#11 module (zlib, required on Debian),
    // and a directory.
    let e = backend_error(Path::new("/lib/x86_64-linux-gnu/libz.so.1"), "t");
    assert!(
        e.contains("exports no C_GetFunctionList") && e.contains("not a PKCS#11 module"),
        "{e}"
    );
    assert!(!e.contains("ldd"), "{e}");
    let e = backend_error(&dir, "t");
    assert!(e.contains("this is a directory"), "{e}");
}

#[test]
fn token_not_found_lists_initialized_tokens_only() {
    let _turn = turn();
    // SoftHSM, loaded once per process, lists the tokens it found then.
    let _s = setup_with(None, false);
    let e = backend_error(Path::new(SOFTHSM), "no-such-token");
    let listed = e
        .split_once("(tokens present: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.to_string())
        .unwrap_or_else(|| panic!("{e}"));
    assert!(listed.starts_with("\"backing-"), "{e}");
    // SoftHSM always offers one free slot, whose token has an empty label.
    assert!(!listed.contains("\"\""), "{e}");
}

#[test]
fn a_wrong_pin_names_the_backing_token_and_warns_of_the_lock() {
    let _turn = turn();
    let s = setup(None);
    let config = Config::load(&s.config).unwrap();
    let backend = Backend::open(&config.backend, &config.source).unwrap();
    let e = backend
        .login(cryptoki_sys::CKU_USER, b"000000")
        .unwrap_err();
    assert_eq!(e.rv, cryptoki_sys::CKR_PIN_INCORRECT);
    let m = e.to_string();
    assert!(
        m.starts_with(&format!(
            "backing token {:?} (module {SOFTHSM}) refused the user PIN: wrong PIN; repeated \
             wrong PINs may lock the token's user PIN (many HSMs count failures and lock it; \
             SoftHSM does not)",
            s.token_label
        )) && m.ends_with("(CKR_PIN_INCORRECT)"),
        "{m}"
    );
    backend
        .login(cryptoki_sys::CKU_USER, PIN.as_bytes())
        .unwrap();
    // SoftHSM keeps one login per process: the provider must start without it.
    backend.logout().unwrap();
    backend.finalize();
    drop(backend);

    // Through the CLI (its login is Backend::login).
    let out = s
        .cli()
        .env("P11DERIVE_PIN", "000000")
        .args(["asset", "create", "x", "--type", "p256"])
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(
        !out.status.success()
            && e.contains(&format!("backing token {:?} (module {SOFTHSM}) refused the user PIN: wrong PIN; repeated wrong PINs may lock", s.token_label))
            && e.contains("(CKR_PIN_INCORRECT)"),
        "{e}"
    );

    // Through the provider: the caller gets the code unchanged, the log the message.
    let p = s.load();
    let session = p.session();
    let from = s.log().len();
    let r = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new("000000".into())),
    );
    assert_eq!(rv_of(r), cryptoki::error::RvError::PinIncorrect);
    let log = s.log_since(from);
    assert!(
        log.contains(&format!(
            "login: user login to backing token {:?} failed: backing token {:?} (module {SOFTHSM}) \
             refused the user PIN: wrong PIN; repeated wrong PINs may lock",
            s.token_label, s.token_label
        )) && log.contains("(CKR_PIN_INCORRECT)"),
        "{log}"
    );
}

/// Whether C_Initialize succeeds with RLIMIT_MEMLOCK `kib`.
fn initializes_with_memlock(s: &Setup, kib: u64) -> bool {
    list_with_memlock(s, kib * 1024).status.success()
}

/// The size the message asks for is the size needed: the README's
/// "`locked_kib` + 256 KiB" (release build, default 1024 KiB).
#[test]
fn the_memory_lock_message_asks_for_exactly_what_is_needed() {
    let _turn = turn();
    let s = setup(None);
    let need = 1024 + 256;
    let from = s.log().len();
    assert!(
        !initializes_with_memlock(&s, 0),
        "C_Initialize succeeded without lockable memory"
    );
    let log = s.log_since(from);
    assert!(
        log.contains(&format!(
            "raise RLIMIT_MEMLOCK to at least {need} KiB (1024 KiB for [memory] locked_kib plus \
             256 KiB for the secret stacks"
        )),
        "{log}"
    );
    // One page short: the arena locks, the last stack does not, and the
    // message asks for the same size.
    let from = s.log().len();
    assert!(
        !initializes_with_memlock(&s, need - 4),
        "C_Initialize succeeded one page short"
    );
    let log = s.log_since(from);
    assert!(
        log.contains("cannot lock a ") && log.contains(&format!("at least {need} KiB")),
        "{log}"
    );
    assert!(
        initializes_with_memlock(&s, need),
        "C_Initialize failed with {need} KiB: {}",
        s.log_since(from)
    );
}

/// On PostgreSQL, a read-only open reads with a role that may only SELECT,
/// and refuses every write itself.
#[test]
fn a_postgres_store_is_read_with_a_select_only_role() {
    let _turn = turn();
    let admin = pg_admin_url();
    let url = pg_database(&admin, "p11derive_read_only");
    let s = setup_with(None, false);
    s.use_pg(&url);
    s.init();
    s.create_asset("ec", "p256");
    let expected = {
        let c = Config::load(&s.config).unwrap();
        read_everything(&Store::open_config(&c.store).unwrap(), None)
    };
    let (_, host_db) = url.split_once('@').unwrap();
    let mut dba = postgres::Client::connect(
        &format!(
            "{}/{}",
            admin.rsplit_once('/').unwrap().0,
            "p11derive_read_only"
        ),
        postgres::NoTls,
    )
    .unwrap();
    dba.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'p11derive_auditor') THEN
             CREATE ROLE p11derive_auditor LOGIN PASSWORD 'auditor-test';
           END IF;
         END $$;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO p11derive_auditor;",
    )
    .unwrap();
    let mut c = Config::load(&s.config).unwrap();
    c.store.url = Some(format!(
        "postgres://p11derive_auditor:auditor-test@{host_db}"
    ));
    let ro = Store::open_config_read_only(&c.store).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(read_everything(&ro, None), expected);
    let e = ro
        .record(None, Record::new(Event::Login, 0).detail("test"))
        .unwrap_err();
    assert!(matches!(e, StoreError::OpenedReadOnly(_)), "{e}");
    // The writers' role, opened read-only, reads the same.
    let mut c = Config::load(&s.config).unwrap();
    c.store.url = Some(url.clone());
    let ro = Store::open_config_read_only(&c.store).unwrap();
    assert_eq!(read_everything(&ro, None), expected);
}
