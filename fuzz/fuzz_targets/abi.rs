//! The C ABI, driven in-process through p11derive's 3.0 function table by a
//! correct-but-hostile caller: every pointer it passes points to memory it
//! owns, and no declared length exceeds that memory, but everything else is
//! the fuzzer's: attribute types and values, lengths (zero, short, longer
//! than the value, null with a length), mechanisms and their parameters,
//! session and object handles, output buffers (null for a length query,
//! too short, in place over the input), call order. Any return code is fine;
//! a crash, a panic (even one the provider would catch and turn into
//! CKR_GENERAL_ERROR) or a hang is a finding.
//!
//! Behind the provider is a real SoftHSM token with an imported root, set
//! up once per process in a scratch directory (tmpfs when there is one):
//! four derived assets (secp256k1, P-256, AES-256, HMAC), session keys and a
//! stored certificate. A "keeper" session, never handed to the program,
//! holds the user login between inputs, so an input does not pay for a
//! login. After each input the harness closes the program's sessions,
//! destroys what it stored, and restores the login, the keeper and the
//! fixtures if the program ended them (logout, C_CloseAllSessions,
//! C_Finalize, a destroyed fixture). If that fails, the whole backing token
//! and store are made anew.
//!
//! Input: a program of up to `MAX_OPS` calls, each an opcode byte and its
//! operands (see `step`). `corpus/abi/` holds hand-made programs
//! (`fuzz/seeds.py`).

#![no_main]

use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use p11derive::ck::*;
use p11derive_fuzz::{certificate, remove_db, scratch_dir, Reader};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The throwaway backing token's PINs. Never printed or logged.
const PIN: &str = "fuzz-user-pin-1";
const SO_PIN: &str = "fuzz-so-pin-2";
const BACKING_LABEL: &str = "p11derive-fuzz";
const ROOT_LABEL: &str = "fuzz-root";
/// The root imported into the backing token: a fixed fuzzing value.
const ROOT: [u8; 32] = [0x5a; 32];

const MAX_OPS: usize = 24;
/// Sessions a program may open beyond its two.
const MAX_SESSIONS: usize = 8;
/// A created asset changes the store for good; past this many the backing
/// token and store are made anew, so inputs keep meeting a small store.
const MAX_CREATED_ASSETS: u32 = 32;

/// The labels of the fixture assets, and the only new asset labels a
/// program may register (others that are valid asset ids are renamed to
/// these, so stores stay small; invalid ones reach the provider as given).
const FIXTURE_LABELS: [&str; 4] = ["fz-ec", "fz-p256", "fz-aes", "fz-hmac"];
const NEW_LABELS: [&str; 4] = ["fz-new-0", "fz-new-1", "fz-new-2", "fz-new-3"];

/// Fixtures a program names directly (by index): the aliases of the four
/// assets, the certificate and the keeper's session keys.
const NAMED: [(&str, CK_OBJECT_CLASS); 11] = [
    ("fz-ec", CKO_PRIVATE_KEY),
    ("fz-ec", CKO_PUBLIC_KEY),
    ("fz-p256", CKO_PRIVATE_KEY),
    ("fz-p256", CKO_PUBLIC_KEY),
    ("fz-aes", CKO_SECRET_KEY),
    ("fz-hmac", CKO_SECRET_KEY),
    ("fz-cert", CKO_CERTIFICATE),
    ("fz-session-aes", CKO_SECRET_KEY),
    ("fz-session-secret", CKO_SECRET_KEY),
    ("fz-session-ec", CKO_PRIVATE_KEY),
    ("fz-session-ec", CKO_PUBLIC_KEY),
];

const OID_SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

type Functions = &'static CK_FUNCTION_LIST_3_0;

/// Calls one entry of the function table; with `P11DERIVE_FUZZ_TRACE` set,
/// prints each call and its return code (for reading a reproduction).
macro_rules! call {
    ($f:expr, $name:ident ( $($a:expr),* $(,)? )) => {{
        // SAFETY: every pointer the harness passes points to memory it owns,
        // valid for the length it declares (or is null).
        let rv = unsafe { ($f.$name.expect(stringify!($name)))($($a),*) };
        if tracing() {
            eprintln!("{} -> {}", stringify!($name), p11derive::error::rv_name(rv));
        }
        rv
    }};
}

fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("P11DERIVE_FUZZ_TRACE").is_some())
}

fn zeroed<T>() -> T {
    // SAFETY: only used for the plain C structs of the PKCS#11 interface
    // (integers, arrays and raw pointers), for which all zeros is valid.
    unsafe { std::mem::zeroed() }
}

// ---- the world: backing token, provider, keeper session, fixtures ---------

struct World {
    f: Functions,
    /// The interface C_GetInterface handed out (the provider allocates a
    /// copy per call, for the caller to keep): kept reachable here.
    _interface: usize,
    dir: PathBuf,
    config: CString,
    keeper: CK_SESSION_HANDLE,
    /// Every object found at the last fixture check, and the session keys
    /// made in the keeper.
    fixtures: Vec<CK_OBJECT_HANDLE>,
    /// The fixtures by name, in the order of `NAMED`.
    named: Vec<CK_OBJECT_HANDLE>,
    /// Fixtures the last program destroyed: made again before the next.
    dirty: bool,
    created_assets: u32,
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);
/// The interfaces programs got from C_GetInterface.
static INTERFACES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn functions() -> (Functions, usize) {
    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    // SAFETY: a valid out-pointer; the default interface is the 3.0 table,
    // which is a static of the provider.
    let rv =
        unsafe { p11derive::abi::C_GetInterface(ptr::null_mut(), ptr::null_mut(), &mut iface, 0) };
    assert_eq!(rv, CKR_OK, "C_GetInterface");
    // SAFETY: as above.
    let f = unsafe { &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0) };
    (f, iface as usize)
}

/// A new backing token with the fuzzing root, a new store, and the config.
fn prepare_backing(dir: &Path) -> CString {
    let tokens = dir.join("tokens");
    let _ = std::fs::remove_dir_all(&tokens);
    std::fs::create_dir_all(&tokens).expect("token directory");
    let softhsm_conf = dir.join("softhsm2.conf");
    std::fs::write(
        &softhsm_conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    // Read by SoftHSM at its C_Initialize, in this process and the tool's.
    std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", BACKING_LABEL])
        .args(["--pin", PIN, "--so-pin", SO_PIN])
        .output()
        .expect("softhsm2-util runs (tools/setup.sh installs softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = dir.join("state.db");
    remove_db(&store);
    let config = dir.join("p11derive.toml");
    std::fs::write(
        &config,
        format!(
            "[token]\nlabel = \"p11derive-fuzz\"\n\n[backend]\nmodule = \"{SOFTHSM}\"\n\
             token_label = \"{BACKING_LABEL}\"\nroot_label = \"{ROOT_LABEL}\"\n\n\
             [store]\npath = \"{}\"\n\n[log]\nfile = \"{}\"\nlevel = \"error\"\n\n\
             [memory]\nallow_unlocked = true\n",
            store.display(),
            dir.join("p11derive.log").display()
        ),
    )
    .expect("config");
    // What `p11derive init --import-root` does, through the same library calls.
    let cfg = p11derive::config::Config::load(&config).expect("fuzz config");
    let backend = p11derive::backend::Backend::open(&cfg.backend, &cfg.source)
        .unwrap_or_else(|e| panic!("backing token: {e}"));
    backend
        .login_admin(PIN.as_bytes())
        .unwrap_or_else(|e| panic!("backing login: {e}"));
    backend
        .import_root(&ROOT)
        .unwrap_or_else(|e| panic!("root import: {e}"));
    p11derive::store::Store::create(&cfg.store.path).expect("store");
    let _ = backend.logout();
    backend.finalize();
    CString::new(config.into_os_string().into_encoded_bytes()).expect("config path")
}

/// Initialize arguments without mutex callbacks; `pReserved` must be NULL
/// (anything else is refused unread); the config comes from P11DERIVE_CONF.
fn init_args(flags: CK_FLAGS, reserved: *const c_char) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags,
        pReserved: reserved as *mut c_void,
    }
}

/// Points P11DERIVE_CONF, where the provider reads its config, at `config`.
fn use_config(config: &CString) {
    use std::os::unix::ffi::OsStrExt;
    std::env::set_var(
        "P11DERIVE_CONF",
        std::ffi::OsStr::from_bytes(config.to_bytes()),
    );
}

fn initialize(f: Functions, config: &CString) -> CK_RV {
    use_config(config);
    let mut args = init_args(CKF_OS_LOCKING_OK, ptr::null());
    call!(f, C_Initialize(&mut args as *mut _ as CK_VOID_PTR))
}

/// `Err` naming the call and its return code unless it returned CKR_OK.
fn check(rv: CK_RV, what: &str) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        let name = p11derive::error::rv_name(rv);
        Err(format!("{what}: {name} ({rv:#x})"))
    }
}

/// An owned attribute list: the values live as long as the list.
struct Template {
    /// (type, value or null, declared length)
    attrs: Vec<(CK_ATTRIBUTE_TYPE, Option<Vec<u8>>, CK_ULONG)>,
    raw: Vec<CK_ATTRIBUTE>,
}

impl Template {
    fn new() -> Self {
        Template {
            attrs: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn with(mut self, ty: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Self {
        self.attrs
            .push((ty, Some(value.to_vec()), value.len() as CK_ULONG));
        self
    }

    fn ulong(self, ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        self.with(ty, &v.to_ne_bytes())
    }

    fn bool(self, ty: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        self.with(ty, &[v as u8])
    }

    /// The C array, pointing into `attrs` (rebuilt after any change).
    fn build(&mut self) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
        self.raw = self
            .attrs
            .iter_mut()
            .map(|(ty, v, len)| CK_ATTRIBUTE {
                type_: *ty,
                pValue: v
                    .as_mut()
                    .map_or(ptr::null_mut(), |v| v.as_mut_ptr() as *mut c_void),
                ulValueLen: *len,
            })
            .collect();
        let p = if self.raw.is_empty() {
            ptr::null_mut()
        } else {
            self.raw.as_mut_ptr()
        };
        (p, self.raw.len() as CK_ULONG)
    }
}

fn mechanism(ty: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

fn find_all(f: Functions, h: CK_SESSION_HANDLE, t: &mut Template) -> Vec<CK_OBJECT_HANDLE> {
    let (p, n) = t.build();
    if call!(f, C_FindObjectsInit(h, p, n)) != CKR_OK {
        return Vec::new();
    }
    let mut all = Vec::new();
    loop {
        let mut buf = [0 as CK_OBJECT_HANDLE; 64];
        let mut count: CK_ULONG = 0;
        let rv = call!(f, C_FindObjects(h, buf.as_mut_ptr(), 64, &mut count));
        if rv != CKR_OK || count == 0 {
            break;
        }
        all.extend_from_slice(&buf[..count as usize]);
    }
    call!(f, C_FindObjectsFinal(h));
    all
}

/// An EC key pair on the curve `oid`, both halves labelled `label`.
fn ec_pair(
    f: Functions,
    h: CK_SESSION_HANDLE,
    token: bool,
    label: &str,
    oid: &[u8],
) -> Result<(), String> {
    let mut public = Template::new()
        .bool(CKA_TOKEN, token)
        .with(CKA_LABEL, label.as_bytes())
        .with(CKA_EC_PARAMS, oid);
    let mut private = Template::new()
        .bool(CKA_TOKEN, token)
        .with(CKA_LABEL, label.as_bytes());
    let (pp, pn) = public.build();
    let (sp, sn) = private.build();
    let mut m = mechanism(CKM_EC_KEY_PAIR_GEN);
    let (mut hp, mut hs) = (0, 0);
    let rv = call!(
        f,
        C_GenerateKeyPair(h, &mut m, pp, pn, sp, sn, &mut hp, &mut hs)
    );
    check(rv, &format!("C_GenerateKeyPair {label}"))
}

fn generate_key(
    f: Functions,
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    mut t: Template,
    label: &str,
) -> Result<(), String> {
    let (p, n) = t.build();
    let mut m = mechanism(mech);
    let mut key = 0;
    let rv = call!(f, C_GenerateKey(h, &mut m, p, n, &mut key));
    check(rv, &format!("C_GenerateKey {label}"))
}

fn create_object(
    f: Functions,
    h: CK_SESSION_HANDLE,
    mut t: Template,
    label: &str,
) -> Result<(), String> {
    let (p, n) = t.build();
    let mut object = 0;
    let rv = call!(f, C_CreateObject(h, p, n, &mut object));
    check(rv, &format!("C_CreateObject {label}"))
}

impl World {
    fn new() -> World {
        let dir = scratch_dir("abi");
        let config = prepare_backing(&dir);
        let (f, interface) = functions();
        let mut w = World {
            f,
            _interface: interface,
            dir,
            config,
            keeper: 0,
            fixtures: Vec::new(),
            named: Vec::new(),
            dirty: true,
            created_assets: 0,
        };
        let rv = initialize(w.f, &w.config);
        assert_eq!(rv, CKR_OK, "C_Initialize (log: {})", w.log_path().display());
        w.restore(&[]).unwrap_or_else(|e| panic!("fixtures: {e}"));
        w
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("p11derive.log")
    }

    /// Everything made anew: backing token, store, provider, fixtures.
    fn reset(&mut self, why: &str) {
        eprintln!("abi: backing token and store made anew ({why})");
        let _ = call!(self.f, C_Finalize(ptr::null_mut()));
        self.config = prepare_backing(&self.dir);
        let _ = std::fs::remove_file(self.log_path());
        let rv = initialize(self.f, &self.config);
        assert_eq!(rv, CKR_OK, "C_Initialize after a reset");
        self.keeper = 0;
        self.dirty = true;
        self.created_assets = 0;
        self.restore(&[])
            .unwrap_or_else(|e| panic!("fixtures after a reset: {e}"));
    }

    /// The provider initialized, the keeper open and logged in as user, the
    /// stored objects in `leftovers` destroyed, the fixtures present.
    fn restore(&mut self, leftovers: &[CK_OBJECT_HANDLE]) -> Result<(), String> {
        let f = self.f;
        let mut info: CK_INFO = zeroed();
        if call!(f, C_GetInfo(&mut info)) == CKR_CRYPTOKI_NOT_INITIALIZED {
            check(initialize(f, &self.config), "C_Initialize")?;
            self.keeper = 0;
        }
        let mut si: CK_SESSION_INFO = zeroed();
        if self.keeper == 0 || call!(f, C_GetSessionInfo(self.keeper, &mut si)) != CKR_OK {
            let mut h = 0;
            let rv = call!(
                f,
                C_OpenSession(
                    1,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    ptr::null_mut(),
                    None,
                    &mut h
                )
            );
            check(rv, "C_OpenSession")?;
            self.keeper = h;
            // Session keys died with the old keeper.
            self.dirty = true;
        }
        call!(f, C_GetSessionInfo(self.keeper, &mut si));
        if si.state != CKS_RW_USER_FUNCTIONS {
            call!(f, C_Logout(self.keeper));
            let rv = call!(
                f,
                C_Login(
                    self.keeper,
                    CKU_USER,
                    PIN.as_ptr() as *mut u8,
                    PIN.len() as CK_ULONG
                )
            );
            check(rv, "C_Login")?;
        }
        for &h in leftovers {
            call!(f, C_DestroyObject(self.keeper, h));
        }
        if self.dirty {
            self.make_fixtures()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Creates whatever fixture is missing and lists every object.
    fn make_fixtures(&mut self) -> Result<(), String> {
        let (f, k) = (self.f, self.keeper);
        let missing = |label: &str| {
            find_all(f, k, &mut Template::new().with(CKA_LABEL, label.as_bytes())).is_empty()
        };
        for (label, oid) in [("fz-ec", OID_SECP256K1), ("fz-p256", OID_P256)] {
            if missing(label) {
                ec_pair(f, k, true, label, oid)?;
            }
        }
        for (label, mech) in [
            ("fz-aes", CKM_AES_KEY_GEN),
            ("fz-hmac", CKM_GENERIC_SECRET_KEY_GEN),
        ] {
            if missing(label) {
                let t = Template::new()
                    .bool(CKA_TOKEN, true)
                    .with(CKA_LABEL, label.as_bytes());
                generate_key(f, k, mech, t, label)?;
            }
        }
        if missing("fz-cert") {
            let t = Template::new()
                .ulong(CKA_CLASS, CKO_CERTIFICATE)
                .ulong(CKA_CERTIFICATE_TYPE, CKC_X_509)
                .bool(CKA_TOKEN, true)
                .with(CKA_LABEL, b"fz-cert")
                .with(CKA_ID, &[1, 2, 3])
                .with(CKA_VALUE, &certificate());
            create_object(f, k, t, "fz-cert")?;
        }
        // Session keys, owned by the keeper.
        if missing("fz-session-aes") {
            let t = Template::new()
                .bool(CKA_TOKEN, false)
                .with(CKA_LABEL, b"fz-session-aes")
                .ulong(CKA_VALUE_LEN, 32)
                .bool(CKA_EXTRACTABLE, true)
                .bool(CKA_WRAP, true)
                .bool(CKA_UNWRAP, true);
            generate_key(f, k, CKM_AES_KEY_GEN, t, "fz-session-aes")?;
        }
        if missing("fz-session-secret") {
            let t = Template::new()
                .ulong(CKA_CLASS, CKO_SECRET_KEY)
                .ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
                .bool(CKA_TOKEN, false)
                .with(CKA_LABEL, b"fz-session-secret")
                .bool(CKA_EXTRACTABLE, true)
                .with(CKA_VALUE, &[0x33; 32]);
            create_object(f, k, t, "fz-session-secret")?;
        }
        // A program may have destroyed one half of the pair: both go.
        let half_gone = |class: CK_OBJECT_CLASS| {
            find_all(
                f,
                k,
                &mut Template::new()
                    .with(CKA_LABEL, b"fz-session-ec")
                    .ulong(CKA_CLASS, class),
            )
            .is_empty()
        };
        if half_gone(CKO_PRIVATE_KEY) || half_gone(CKO_PUBLIC_KEY) {
            for h in find_all(f, k, &mut Template::new().with(CKA_LABEL, b"fz-session-ec")) {
                call!(f, C_DestroyObject(k, h));
            }
            ec_pair(f, k, false, "fz-session-ec", OID_P256)?;
        }
        self.fixtures = find_all(f, k, &mut Template::new());
        self.fixtures.sort_unstable();
        self.named.clear();
        for (label, class) in NAMED {
            let found = find_all(
                f,
                k,
                &mut Template::new()
                    .with(CKA_LABEL, label.as_bytes())
                    .ulong(CKA_CLASS, class),
            );
            match found[..] {
                [h] => self.named.push(h),
                _ => return Err(format!("{label}: {} objects", found.len())),
            }
        }
        Ok(())
    }
}

// ---- the program ----------------------------------------------------------

/// What one program has: its sessions, what it made, its last output.
struct Program<'w> {
    w: &'w World,
    r: Reader<'w>,
    sessions: Vec<CK_SESSION_HANDLE>,
    closed: Vec<CK_SESSION_HANDLE>,
    created: Vec<CK_OBJECT_HANDLE>,
    seen: Vec<CK_OBJECT_HANDLE>,
    /// The last output a call wrote (signature, ciphertext, wrapped key...),
    /// for the next call's input.
    last: Vec<u8>,
    destroyed_fixture: bool,
    created_assets: u32,
}

/// Attribute types beyond an asset object's: certificates' and data
/// objects', the profile object's, and one the provider has no use for.
const OTHER_ATTRIBUTE_TYPES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_APPLICATION,
    CKA_OBJECT_ID,
    CKA_CERTIFICATE_TYPE,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_PROFILE_ID,
    CKA_WRAP_TEMPLATE,
];

/// Mechanisms the provider does not implement.
const OTHER_MECHANISMS: &[CK_MECHANISM_TYPE] = &[CKM_RSA_PKCS, CKM_AES_CBC];

/// The attribute types a program picks from: every one an asset object has
/// (the library's attribute table), then [`OTHER_ATTRIBUTE_TYPES`].
fn attribute_types() -> &'static [CK_ATTRIBUTE_TYPE] {
    static TYPES: OnceLock<Vec<CK_ATTRIBUTE_TYPE>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut types = p11derive::objects::attribute_types();
        let other: Vec<_> = OTHER_ATTRIBUTE_TYPES
            .iter()
            .filter(|t| !types.contains(t))
            .collect();
        types.extend(other);
        types
    })
}

/// The mechanisms a program picks from: every one the provider lists
/// (`C_GetMechanismList`), then [`OTHER_MECHANISMS`].
fn mechanisms() -> &'static [CK_MECHANISM_TYPE] {
    static TYPES: OnceLock<Vec<CK_MECHANISM_TYPE>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut types: Vec<CK_MECHANISM_TYPE> = p11derive::mechanisms::mechanism_list()
            .into_iter()
            .map(|(ty, _)| ty)
            .collect();
        let other: Vec<_> = OTHER_MECHANISMS
            .iter()
            .filter(|t| !types.contains(t))
            .collect();
        types.extend(other);
        types
    })
}

/// CK_ULONG values that mean something in some attribute.
const ULONGS: &[CK_ULONG] = &[
    0,
    1,
    16,
    24,
    32,
    33,
    512,
    513,
    CKO_DATA,
    CKO_CERTIFICATE,
    CKO_PUBLIC_KEY,
    CKO_PRIVATE_KEY,
    CKO_SECRET_KEY,
    CKO_PROFILE,
    CKK_EC,
    CKK_AES,
    CKK_GENERIC_SECRET,
    CKK_SHA256_HMAC,
    CKC_X_509,
    CKM_ECDSA_SHA256,
    CKM_AES_GCM,
    CK_UNAVAILABLE_INFORMATION,
    1 << 31,
    u32::MAX as CK_ULONG,
];

const LABELS: &[&[u8]] = &[
    b"fz-ec",
    b"fz-p256",
    b"fz-aes",
    b"fz-hmac",
    b"fz-ec@v1",
    b"fz-new-0",
    b"fz-new-1",
    b"",
    b"bad label!",
    b"fz-cert",
    b"fz-session-aes",
    &[b'x'; 65],
    &[0xff, 0xfe],
];

const EC_PARAMS: &[&[u8]] = &[
    OID_SECP256K1,
    OID_P256,
    OID_P384,
    b"\x13\x09secp256k1",
    b"\x06\x00",
    b"\x06\x05\x2b\x81\x04\x00",
    b"\x30\x03\x02\x01\x01",
];

impl<'w> Program<'w> {
    fn f(&self) -> Functions {
        self.w.f
    }

    // -- operands --

    fn session(&mut self) -> CK_SESSION_HANDLE {
        let h = match self.r.u8() % 8 {
            0..=2 => self.sessions[0],
            3 => self.sessions[1],
            4 => {
                let i = self.r.u8() as usize;
                self.sessions[i % self.sessions.len()]
            }
            5 => self.closed.last().copied().unwrap_or(0),
            6 => 0,
            _ => self.r.u64(),
        };
        // The keeper is the harness's: a program gets a handle next to it.
        if h == self.w.keeper {
            h ^ (1 << 40)
        } else {
            h
        }
    }

    fn object(&mut self) -> CK_OBJECT_HANDLE {
        let (fixtures, named) = (&self.w.fixtures, &self.w.named);
        match self.r.u8() % 11 {
            0..=2 => named[self.r.u8() as usize % named.len()],
            3 => fixtures[self.r.u8() as usize % fixtures.len()],
            4 if !self.created.is_empty() => {
                self.created[self.r.u8() as usize % self.created.len()]
            }
            5 if !self.seen.is_empty() => self.seen[self.r.u8() as usize % self.seen.len()],
            6 | 7 => 0,
            8 => (1 << 31) | (self.r.u8() as CK_ULONG),
            9 => (1 << (29 + self.r.u8() % 2)) | (self.r.u8() as CK_ULONG % 4),
            _ => self.r.u64(),
        }
    }

    fn mechanism_type(&mut self) -> CK_MECHANISM_TYPE {
        match self.r.u8() {
            0..=239 => self.r.pick(mechanisms()),
            240..=247 => CKM_VENDOR_DEFINED | self.r.u8() as CK_ULONG,
            _ => self.r.u64(),
        }
    }

    /// A mechanism and the memory its parameter points to.
    fn mechanism(&mut self, store: &mut Vec<Vec<u8>>) -> CK_MECHANISM {
        let ty = self.mechanism_type();
        let mut m = mechanism(ty);
        match self.r.u8() % 6 {
            0 | 1 => {}
            // Null with a length.
            2 => m.ulParameterLen = self.r.u64(),
            3 => {
                let mut bytes = self.r.blob(64).to_vec();
                // Raw bytes of a CK_GCM_PARAMS size would be read as one, with
                // pointers the caller never meant: not a correct caller.
                if ty == CKM_AES_GCM && matches!(bytes.len(), 40 | 48) {
                    bytes.push(0);
                }
                m.ulParameterLen = bytes.len() as CK_ULONG;
                m.pParameter = bytes.as_mut_ptr() as *mut c_void;
                store.push(bytes);
            }
            _ => self.gcm_params(&mut m, store),
        }
        m
    }

    /// `CK_GCM_PARAMS`, full or of the older layout without `ulIvBits`.
    fn gcm_params(&mut self, m: &mut CK_MECHANISM, store: &mut Vec<Vec<u8>>) {
        let mut iv = vec![0u8; self.r.u8() as usize % 64];
        let iv_fill = self.r.bytes(iv.len().min(16));
        iv[..iv_fill.len()].copy_from_slice(iv_fill);
        let iv_len = self.declared(iv.len());
        let iv_ptr = self.pointer(&mut iv);
        let mut aad = self.r.blob(255).to_vec();
        let aad_len = self.declared(aad.len());
        let aad_ptr = self.pointer(&mut aad);
        let iv_bits = match self.r.u8() % 4 {
            0 | 1 => 0,
            2 => iv_len.wrapping_mul(8),
            _ => self.r.u64(),
        };
        let tag_bits = match self.r.u8() % 4 {
            0 | 1 => 128,
            2 => self
                .r
                .pick(&[0, 8, 32, 64, 96, 104, 112, 120, 127, 129, 256]),
            _ => self.r.u64(),
        };
        let words: Vec<u64> = if self.r.bool() {
            // pIv, ulIvLen, pAAD, ulAADLen, ulTagBits
            vec![iv_ptr as u64, iv_len, aad_ptr as u64, aad_len, tag_bits]
        } else {
            vec![
                iv_ptr as u64,
                iv_len,
                iv_bits,
                aad_ptr as u64,
                aad_len,
                tag_bits,
            ]
        };
        let mut block: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        m.mechanism = CKM_AES_GCM;
        m.pParameter = block.as_mut_ptr() as *mut c_void;
        m.ulParameterLen = block.len() as CK_ULONG;
        store.push(iv);
        store.push(aad);
        store.push(block);
    }

    /// A length for a buffer of `len` bytes: mostly all of it, sometimes
    /// less (never more).
    fn declared(&mut self, len: usize) -> CK_ULONG {
        match self.r.u8() % 4 {
            0 | 1 => len as CK_ULONG,
            2 => (self.r.u32() as usize % (len + 1)) as CK_ULONG,
            _ => 0,
        }
    }

    /// Null when the next byte is a multiple of `one_in`, else `p`.
    fn null_or<T>(&mut self, one_in: u8, p: *mut T) -> *mut T {
        if self.r.u8().is_multiple_of(one_in) {
            ptr::null_mut()
        } else {
            p
        }
    }

    /// A valid out-pointer, or now and then null.
    fn maybe<T>(&mut self, v: &mut T) -> *mut T {
        self.null_or(16, v)
    }

    /// The buffer's address, or now and then null (with whatever length
    /// was declared: the provider must refuse it).
    fn pointer(&mut self, buf: &mut [u8]) -> *mut u8 {
        self.null_or(8, buf.as_mut_ptr())
    }

    fn attribute_type(&mut self) -> CK_ATTRIBUTE_TYPE {
        match self.r.u8() {
            0..=243 => self.r.pick(attribute_types()),
            244..=249 => CKA_VENDOR_DEFINED | self.r.u32() as CK_ULONG,
            _ => self.r.u64(),
        }
    }

    /// A template of up to 8 attributes, values of every shape.
    fn template(&mut self) -> Template {
        let mut t = Template::new();
        for _ in 0..self.r.u8() % 9 {
            let ty = self.attribute_type();
            let (value, len) = match self.r.u8() % 12 {
                0 => (None, 0),
                1 => (None, self.r.u64()),
                2 | 3 => {
                    let v = match self.r.u8() % 4 {
                        0 => self.r.u64(),
                        _ => self.r.pick(ULONGS),
                    };
                    (Some(v.to_ne_bytes().to_vec()), 8)
                }
                4 | 5 => {
                    let b = match self.r.u8() % 4 {
                        0 => 0,
                        1 => self.r.u8(),
                        _ => 1,
                    };
                    (Some(vec![b]), 1)
                }
                6 => {
                    let v = self.r.blob(64).to_vec();
                    let n = v.len() as CK_ULONG;
                    (Some(v), n)
                }
                7 => {
                    let v = self.r.pick(LABELS).to_vec();
                    let n = v.len() as CK_ULONG;
                    (Some(v), n)
                }
                8 => {
                    let v = self.r.pick(EC_PARAMS).to_vec();
                    let n = v.len() as CK_ULONG;
                    (Some(v), n)
                }
                9 => {
                    // Large: up to 256 KiB of zeros.
                    let n = (self.r.u32() as usize) % (256 * 1024 + 1);
                    (Some(vec![0u8; n]), n as CK_ULONG)
                }
                10 => {
                    let v = certificate();
                    let n = v.len() as CK_ULONG;
                    (Some(v), n)
                }
                _ => {
                    let n = self.r.u8() % 8;
                    let v: Vec<u8> = (0..n)
                        .flat_map(|_| self.r.pick(mechanisms()).to_ne_bytes())
                        .collect();
                    let n = v.len() as CK_ULONG;
                    (Some(v), n)
                }
            };
            // Mismatched lengths: shorter than the value, within it.
            let len = match (&value, self.r.u8() % 8) {
                (Some(v), 0) => (self.r.u32() as usize % (v.len() + 1)) as CK_ULONG,
                (Some(_), 1) => 0,
                _ => len,
            };
            t.attrs.push((ty, value, len));
        }
        t
    }

    /// Renames valid new asset labels to the few the harness allows.
    fn tame_labels(&self, t: &mut Template) {
        for (ty, value, len) in &mut t.attrs {
            let Some(v) = value else { continue };
            // The provider reads the declared prefix.
            if *ty != CKA_LABEL || (*len as usize) > v.len() {
                continue;
            }
            let Ok(label) = std::str::from_utf8(&v[..*len as usize]) else {
                continue;
            };
            let valid = !label.is_empty()
                && label.len() <= 64
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
            if !valid || FIXTURE_LABELS.contains(&label) || NEW_LABELS.contains(&label) {
                continue;
            }
            let pick = label
                .bytes()
                .fold(0usize, |a, c| a.wrapping_add(c as usize))
                % 4;
            *v = NEW_LABELS[pick].as_bytes().to_vec();
            *len = v.len() as CK_ULONG;
        }
    }

    /// Input bytes for a data-taking call: (buffer, declared length, null?).
    fn input(&mut self) -> (Vec<u8>, CK_ULONG, bool) {
        let buf = match self.r.u8() % 8 {
            0 | 1 => self.r.blob(255).to_vec(),
            2 | 3 => self.last.clone(),
            4 => vec![0u8; self.r.u16() as usize % 8192],
            5 => self.r.bytes(32).to_vec(),
            6 => return (Vec::new(), self.r.u64() | 1, true),
            _ => Vec::new(),
        };
        let len = buf.len() as CK_ULONG;
        (buf, len, false)
    }

    fn ptr_of(buf: &mut [u8], null: bool) -> *mut u8 {
        if null {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr()
        }
    }

    /// Calls `f(input, input_len, output, output_len)` with an output of
    /// some shape, and keeps what it wrote.
    fn in_out(
        &mut self,
        f: impl FnOnce(*mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV,
    ) -> CK_RV {
        let (mut input, in_len, null) = self.input();
        let in_ptr = Self::ptr_of(&mut input, null);
        let mode = self.r.u8() % 8;
        if mode == 7 && !null && !input.is_empty() {
            // In place: the output overwrites the input.
            let mut len = (self.r.u32() as usize % (input.len() + 1)) as CK_ULONG;
            let cap = len;
            let rv = f(in_ptr, in_len, in_ptr, &mut len);
            self.keep(rv, &input, cap, len);
            return rv;
        }
        self.with_output(mode, |out, len| f(in_ptr, in_len, out, len))
    }

    /// An output buffer by the PKCS#11 convention: null (a length query),
    /// too short, long enough, or no length pointer at all.
    fn with_output(&mut self, mode: u8, f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> CK_RV {
        match mode % 8 {
            0 => {
                let mut len = self.r.u64();
                f(ptr::null_mut(), &mut len)
            }
            1 => f(ptr::null_mut(), ptr::null_mut()),
            2 => {
                // A buffer but no length pointer.
                let mut buf = vec![0u8; self.r.u8() as usize % 80];
                f(buf.as_mut_ptr(), ptr::null_mut())
            }
            _ => {
                let size = match mode % 8 {
                    3 => self.r.u8() as usize % 80,
                    _ => self.r.u16() as usize % 9000,
                };
                let mut buf = vec![0u8; size];
                let mut len = self.declared(size);
                let cap = len;
                let rv = f(buf.as_mut_ptr(), &mut len);
                self.keep(rv, &buf, cap, len);
                rv
            }
        }
    }

    /// Checks a written length against the buffer and keeps the output.
    fn keep(&mut self, rv: CK_RV, buf: &[u8], cap: CK_ULONG, len: CK_ULONG) {
        if rv == CKR_OK {
            assert!(
                len <= cap,
                "the provider reports {len} bytes written into a buffer of {cap}"
            );
            if len > 0 {
                self.last = buf[..len as usize].to_vec();
            }
        }
    }

    fn track_created(&mut self, rv: CK_RV, handles: &[CK_OBJECT_HANDLE]) {
        if rv != CKR_OK {
            return;
        }
        for &h in handles {
            // Session keys carry bit 31, stored objects bit 30; anything
            // else is a new derived asset, kept by the store for good.
            if h & (3 << 30) == 0 {
                self.created_assets += 1;
            }
            self.created.push(h);
        }
    }

    /// One call. Returns false when the program has ended.
    fn step(&mut self) -> bool {
        if self.r.done() {
            return false;
        }
        let f = self.f();
        let op = self.r.u8() % 40;
        match op {
            0 => {
                let h = self.session();
                let mut t = self.template();
                let (p, n) = t.build();
                call!(f, C_FindObjectsInit(h, p, n));
            }
            1 => {
                let h = self.session();
                let mut buf = [0 as CK_OBJECT_HANDLE; 16];
                let mut count: CK_ULONG = 0;
                let (p, max) = match self.r.u8() % 4 {
                    0 => (ptr::null_mut(), 0),
                    1 => (ptr::null_mut(), 1 + self.r.u8() as CK_ULONG),
                    _ => (buf.as_mut_ptr(), self.r.u8() as CK_ULONG % 17),
                };
                let pc = self.null_or(8, &mut count);
                let rv = call!(f, C_FindObjects(h, p, max, pc));
                if rv == CKR_OK && !p.is_null() {
                    assert!(count <= max, "C_FindObjects: {count} handles into {max}");
                    self.seen.extend_from_slice(&buf[..count as usize]);
                    self.seen.truncate(64);
                }
            }
            2 => {
                let h = self.session();
                call!(f, C_FindObjectsFinal(h));
            }
            3 => {
                let h = self.session();
                let mut t = self.template();
                let (p, n) = t.build();
                let mut obj = 0;
                let out = self.maybe(&mut obj);
                let rv = call!(f, C_CreateObject(h, p, n, out));
                self.track_created(rv, &[obj]);
            }
            4 => {
                let h = self.session();
                let mut store = Vec::new();
                let mut m = self.mechanism(&mut store);
                let mut t = self.template();
                self.tame_labels(&mut t);
                let (p, n) = t.build();
                let mut obj = 0;
                let out = self.maybe(&mut obj);
                let mp = self.maybe(&mut m);
                let rv = call!(f, C_GenerateKey(h, mp, p, n, out));
                self.track_created(rv, &[obj]);
            }
            5 => {
                let h = self.session();
                let mut store = Vec::new();
                let mut m = self.mechanism(&mut store);
                let mut public = self.template();
                let mut private = self.template();
                self.tame_labels(&mut public);
                self.tame_labels(&mut private);
                let (pp, pn) = public.build();
                let (sp, sn) = private.build();
                let (mut hp, mut hs) = (0, 0);
                let op = self.maybe(&mut hp);
                let os = self.maybe(&mut hs);
                let mp = self.maybe(&mut m);
                let rv = call!(f, C_GenerateKeyPair(h, mp, pp, pn, sp, sn, op, os));
                self.track_created(rv, &[hp, hs]);
            }
            6 => self.get_attributes(),
            7 => {
                let h = self.session();
                let o = self.object();
                let mut t = self.template();
                let (p, n) = t.build();
                call!(f, C_SetAttributeValue(h, o, p, n));
            }
            8 => {
                let h = self.session();
                let o = self.object();
                let mut size = 0;
                let out = self.maybe(&mut size);
                call!(f, C_GetObjectSize(h, o, out));
            }
            9 => {
                let h = self.session();
                let o = self.object();
                let rv = call!(f, C_DestroyObject(h, o));
                if rv == CKR_OK {
                    self.created.retain(|&c| c != o);
                    if self.w.fixtures.contains(&o) {
                        self.destroyed_fixture = true;
                    }
                }
            }
            10 | 14 | 18 | 22 | 26 => {
                let h = self.session();
                let mut store = Vec::new();
                let mut m = self.mechanism(&mut store);
                let mp = self.maybe(&mut m);
                let key = self.object();
                match op {
                    10 => call!(f, C_SignInit(h, mp, key)),
                    14 => call!(f, C_VerifyInit(h, mp, key)),
                    18 => call!(f, C_EncryptInit(h, mp, key)),
                    22 => call!(f, C_DecryptInit(h, mp, key)),
                    _ => call!(f, C_DigestInit(h, mp)),
                };
            }
            11 | 19 | 23 | 27 => {
                let h = self.session();
                self.in_out(|i, il, o, ol| match op {
                    11 => call!(f, C_Sign(h, i, il, o, ol)),
                    19 => call!(f, C_Encrypt(h, i, il, o, ol)),
                    23 => call!(f, C_Decrypt(h, i, il, o, ol)),
                    _ => call!(f, C_Digest(h, i, il, o, ol)),
                });
            }
            12 | 16 | 28 => {
                let h = self.session();
                let (mut input, len, null) = self.input();
                let p = Self::ptr_of(&mut input, null);
                match op {
                    12 => call!(f, C_SignUpdate(h, p, len)),
                    16 => call!(f, C_VerifyUpdate(h, p, len)),
                    _ => call!(f, C_DigestUpdate(h, p, len)),
                };
            }
            20 | 24 => {
                let h = self.session();
                self.in_out(|i, il, o, ol| match op {
                    20 => call!(f, C_EncryptUpdate(h, i, il, o, ol)),
                    _ => call!(f, C_DecryptUpdate(h, i, il, o, ol)),
                });
            }
            13 | 21 | 25 | 29 => {
                let h = self.session();
                let mode = self.r.u8();
                self.with_output(mode, |o, ol| match op {
                    13 => call!(f, C_SignFinal(h, o, ol)),
                    21 => call!(f, C_EncryptFinal(h, o, ol)),
                    25 => call!(f, C_DecryptFinal(h, o, ol)),
                    _ => call!(f, C_DigestFinal(h, o, ol)),
                });
            }
            15 => {
                let h = self.session();
                let (mut data, dl, dnull) = self.input();
                let (mut sig, sl, snull) = self.input();
                let dp = Self::ptr_of(&mut data, dnull);
                let sp = Self::ptr_of(&mut sig, snull);
                call!(f, C_Verify(h, dp, dl, sp, sl));
            }
            17 => {
                let h = self.session();
                let (mut sig, sl, snull) = self.input();
                let sp = Self::ptr_of(&mut sig, snull);
                call!(f, C_VerifyFinal(h, sp, sl));
            }
            30 => {
                let h = self.session();
                let mut store = Vec::new();
                let mut m = self.mechanism(&mut store);
                let mp = self.maybe(&mut m);
                let (wrapping, key) = (self.object(), self.object());
                let mode = self.r.u8();
                self.with_output(mode, |o, ol| {
                    call!(f, C_WrapKey(h, mp, wrapping, key, o, ol))
                });
            }
            31 => {
                let h = self.session();
                let mut store = Vec::new();
                let mut m = self.mechanism(&mut store);
                let unwrapping = self.object();
                let (mut wrapped, wl, wnull) = self.input();
                let wp = Self::ptr_of(&mut wrapped, wnull);
                let mut t = self.template();
                let (p, n) = t.build();
                let mut obj = 0;
                let out = self.maybe(&mut obj);
                let mp = self.maybe(&mut m);
                let rv = call!(f, C_UnwrapKey(h, mp, unwrapping, wp, wl, p, n, out));
                self.track_created(rv, &[obj]);
            }
            32 => {
                let h = self.session();
                if self.r.bool() {
                    let mut buf = vec![0u8; self.r.u16() as usize % 1025];
                    let len = self.declared(buf.len());
                    let p = self.pointer(&mut buf);
                    call!(f, C_GenerateRandom(h, p, len));
                } else {
                    let (mut seed, len, null) = self.input();
                    let p = Self::ptr_of(&mut seed, null);
                    call!(f, C_SeedRandom(h, p, len));
                }
            }
            33 => {
                if self.sessions.len() < 2 + MAX_SESSIONS {
                    let slot = self.slot();
                    let flags = match self.r.u8() % 5 {
                        0 | 1 => CKF_SERIAL_SESSION | CKF_RW_SESSION,
                        2 => CKF_SERIAL_SESSION,
                        3 => CKF_RW_SESSION,
                        _ => self.r.u64(),
                    };
                    let mut h = 0;
                    let out = self.maybe(&mut h);
                    let rv = call!(f, C_OpenSession(slot, flags, ptr::null_mut(), None, out));
                    if rv == CKR_OK {
                        self.sessions.push(h);
                    }
                }
            }
            34 => {
                let h = self.session();
                if call!(f, C_CloseSession(h)) == CKR_OK {
                    self.closed.push(h);
                }
            }
            35 => {
                let slot = self.slot();
                call!(f, C_CloseAllSessions(slot));
            }
            36 => self.login(),
            37 => {
                let h = self.session();
                if self.r.bool() {
                    call!(f, C_Logout(h));
                } else {
                    let flags = match self.r.u8() % 3 {
                        0 => self
                            .r
                            .pick(&[CKF_SIGN, CKF_VERIFY, CKF_ENCRYPT, CKF_DECRYPT]),
                        1 => CKF_SIGN | CKF_ENCRYPT | CKF_DECRYPT | CKF_VERIFY | CKF_DIGEST,
                        _ => self.r.u64(),
                    };
                    call!(f, C_SessionCancel(h, flags));
                }
            }
            38 => self.info(),
            _ => self.reinitialize(),
        }
        true
    }

    fn slot(&mut self) -> CK_SLOT_ID {
        match self.r.u8() % 8 {
            0..=5 => 1,
            6 => 0,
            _ => self.r.u64(),
        }
    }

    /// C_GetAttributeValue with buffers of every shape.
    fn get_attributes(&mut self) {
        let f = self.f();
        let h = self.session();
        let o = self.object();
        let n = self.r.u8() % 9;
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let mut attrs: Vec<CK_ATTRIBUTE> = Vec::new();
        for _ in 0..n {
            let ty = self.attribute_type();
            let (p, len) = match self.r.u8() % 4 {
                // A length query.
                0 | 1 => (ptr::null_mut(), self.r.u64()),
                _ => {
                    let size = match self.r.u8() % 3 {
                        0 => self.r.u8() as usize % 9,
                        _ => self.r.u16() as usize % 600,
                    };
                    let mut b = vec![0u8; size];
                    let len = self.declared(size);
                    let p = b.as_mut_ptr() as *mut c_void;
                    bufs.push(b);
                    (p, len)
                }
            };
            attrs.push(CK_ATTRIBUTE {
                type_: ty,
                pValue: p,
                ulValueLen: len,
            });
        }
        let before: Vec<CK_ULONG> = attrs.iter().map(|a| a.ulValueLen).collect();
        let (p, count) = match self.r.u8() % 16 {
            0 => (ptr::null_mut(), n as CK_ULONG),
            1 => (attrs.as_mut_ptr(), 0),
            _ => (attrs.as_mut_ptr(), n as CK_ULONG),
        };
        let p = if attrs.is_empty() && !p.is_null() {
            ptr::null_mut()
        } else {
            p
        };
        call!(f, C_GetAttributeValue(h, o, p, count));
        for (a, cap) in attrs.iter().zip(before) {
            if !a.pValue.is_null() && a.ulValueLen != CK_UNAVAILABLE_INFORMATION {
                assert!(
                    a.ulValueLen <= cap,
                    "C_GetAttributeValue: {} bytes into a buffer of {cap}",
                    a.ulValueLen
                );
            }
        }
    }

    fn login(&mut self) {
        let f = self.f();
        let h = self.session();
        let user = match self.r.u8() % 6 {
            0..=2 => CKU_USER,
            3 => CKU_SO,
            4 => CKU_CONTEXT_SPECIFIC,
            _ => self.r.u64(),
        };
        let mut pin = match self.r.u8() % 6 {
            0..=2 => PIN.as_bytes().to_vec(),
            3 => SO_PIN.as_bytes().to_vec(),
            _ => self.r.blob(32).to_vec(),
        };
        let len = self.declared(pin.len());
        let p = self.pointer(&mut pin);
        if self.r.u8().is_multiple_of(4) {
            let mut name = self.r.blob(16).to_vec();
            let nl = self.declared(name.len());
            let np = self.pointer(&mut name);
            call!(f, C_LoginUser(h, user, p, len, np, nl));
        } else {
            call!(f, C_Login(h, user, p, len));
        }
    }

    /// The read-only calls about slots, tokens and mechanisms.
    fn info(&mut self) {
        let f = self.f();
        let slot = self.slot();
        match self.r.u8() % 11 {
            0 => {
                let mut info: CK_INFO = zeroed();
                let p = self.maybe(&mut info);
                call!(f, C_GetInfo(p));
            }
            1 => {
                let mut info: CK_SLOT_INFO = zeroed();
                let p = self.maybe(&mut info);
                call!(f, C_GetSlotInfo(slot, p));
            }
            2 => {
                let mut info: CK_TOKEN_INFO = zeroed();
                let p = self.maybe(&mut info);
                call!(f, C_GetTokenInfo(slot, p));
            }
            3 => {
                let mut list = [0 as CK_ULONG; 64];
                let mut count = self.r.u8() as CK_ULONG % 65;
                let p = self.null_or(2, list.as_mut_ptr());
                let pc = self.maybe(&mut count);
                if self.r.bool() {
                    call!(f, C_GetMechanismList(slot, p, pc));
                } else {
                    call!(f, C_GetSlotList(self.r.u8() as CK_BBOOL, p, pc));
                }
            }
            4 => {
                let ty = self.mechanism_type();
                let mut info: CK_MECHANISM_INFO = zeroed();
                let p = self.maybe(&mut info);
                call!(f, C_GetMechanismInfo(slot, ty, p));
            }
            5 => {
                let h = self.session();
                let mut info: CK_SESSION_INFO = zeroed();
                let p = self.maybe(&mut info);
                call!(f, C_GetSessionInfo(h, p));
            }
            6 => {
                let h = self.session();
                call!(f, C_GetFunctionStatus(h));
                call!(f, C_CancelFunction(h));
            }
            7 => {
                let mut pin = PIN.as_bytes().to_vec();
                let mut label = [b' '; 32];
                call!(
                    f,
                    C_InitToken(
                        slot,
                        pin.as_mut_ptr(),
                        pin.len() as CK_ULONG,
                        label.as_mut_ptr()
                    )
                );
            }
            8 => {
                let mut list: [CK_INTERFACE; 4] = zeroed();
                let mut count = self.r.u8() as CK_ULONG % 5;
                let p = self.null_or(2, list.as_mut_ptr());
                let pc = self.maybe(&mut count);
                // SAFETY: `list` holds 4 entries and `count` is at most 4.
                unsafe { p11derive::abi::C_GetInterfaceList(p, pc) };
            }
            9 => {
                // A NUL-terminated name, or none.
                let mut name = match self.r.u8() % 4 {
                    0 => None,
                    1 => Some(b"PKCS 11".to_vec()),
                    _ => Some(self.r.blob(16).to_vec()),
                };
                if let Some(n) = &mut name {
                    n.push(0);
                }
                let np = name.as_mut().map_or(ptr::null_mut(), |n| n.as_mut_ptr());
                let mut version = match self.r.u8() % 4 {
                    0 => CK_VERSION { major: 3, minor: 0 },
                    1 => CK_VERSION {
                        major: 2,
                        minor: 40,
                    },
                    _ => CK_VERSION {
                        major: self.r.u8(),
                        minor: self.r.u8(),
                    },
                };
                let vp = self.null_or(2, &mut version);
                let mut iface: *mut CK_INTERFACE = ptr::null_mut();
                let ip = self.maybe(&mut iface);
                let flags = match self.r.u8() % 3 {
                    0 => 0,
                    1 => CKF_INTERFACE_FORK_SAFE,
                    _ => self.r.u64(),
                };
                // SAFETY: a NUL-terminated name or null, a CK_VERSION or
                // null, an out-pointer or null.
                unsafe { p11derive::abi::C_GetInterface(np, vp, ip, flags) };
                // The provider allocates a copy per call, which the caller
                // keeps (and can never free): kept reachable, as a caller
                // holding it would, so the exit leak check passes.
                if !iface.is_null() {
                    INTERFACES
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(iface as usize);
                }
            }
            _ => {
                let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
                let p = self.maybe(&mut list);
                // SAFETY: an out-pointer or null.
                unsafe { p11derive::abi::C_GetFunctionList(p) };
            }
        }
    }

    /// C_Finalize and C_Initialize with arguments of every shape.
    fn reinitialize(&mut self) {
        let f = self.f();
        match self.r.u8() % 4 {
            0 => {
                let mut junk = [0u8; 8];
                let p = self.null_or(2, junk.as_mut_ptr());
                call!(f, C_Finalize(p as CK_VOID_PTR));
            }
            _ => {
                if self.r.bool() {
                    call!(f, C_Finalize(ptr::null_mut()));
                }
                let flags = [CKF_OS_LOCKING_OK, 0, CKF_LIBRARY_CANT_CREATE_OS_THREADS];
                let flags = self.r.pick(&flags);
                // pReserved: NULL with the config, NULL with a config
                // file that does not exist, or a non-NULL pointer (refused
                // unread: CKR_ARGUMENTS_BAD).
                let reserved = match self.r.u8() % 3 {
                    0 => {
                        use_config(&self.w.config);
                        ptr::null()
                    }
                    1 => {
                        use_config(&CString::from(c"/nonexistent/p11derive.toml"));
                        ptr::null()
                    }
                    _ => {
                        use_config(&self.w.config);
                        self.w.config.as_ptr()
                    }
                };
                let mut args = init_args(flags, reserved);
                // The mutex callbacks: all, some or none (never called by a
                // provider that locks with the OS's primitives).
                let which = self.r.u8();
                if which & 1 != 0 {
                    args.CreateMutex = Some(create_mutex);
                }
                if which & 2 != 0 {
                    args.DestroyMutex = Some(mutex_op);
                }
                if which & 4 != 0 {
                    args.LockMutex = Some(mutex_op);
                }
                if which & 8 != 0 {
                    args.UnlockMutex = Some(mutex_op);
                }
                let p = self.null_or(4, &mut args);
                call!(f, C_Initialize(p as CK_VOID_PTR));
            }
        }
    }
}

unsafe extern "C" fn create_mutex(_: CK_VOID_PTR_PTR) -> CK_RV {
    panic!("p11derive called the application's CreateMutex")
}

unsafe extern "C" fn mutex_op(_: CK_VOID_PTR) -> CK_RV {
    panic!("p11derive called an application mutex callback")
}

fn run(w: &mut World, data: &[u8]) {
    let f = w.f;
    let mut sessions = Vec::new();
    for flags in [CKF_SERIAL_SESSION | CKF_RW_SESSION, CKF_SERIAL_SESSION] {
        let mut h = 0;
        let rv = call!(f, C_OpenSession(1, flags, ptr::null_mut(), None, &mut h));
        assert_eq!(rv, CKR_OK, "C_OpenSession for a program");
        sessions.push(h);
    }
    let mut p = Program {
        w,
        r: Reader::new(data),
        sessions,
        closed: Vec::new(),
        created: Vec::new(),
        seen: Vec::new(),
        last: Vec::new(),
        destroyed_fixture: false,
        created_assets: 0,
    };
    for _ in 0..MAX_OPS {
        if !p.step() {
            break;
        }
    }
    let (sessions, created, destroyed, assets) =
        (p.sessions, p.created, p.destroyed_fixture, p.created_assets);
    for h in sessions {
        call!(f, C_CloseSession(h));
    }
    w.dirty |= destroyed;
    w.created_assets += assets;
    // Stored objects outlive sessions: the program's go now.
    let stored: Vec<CK_OBJECT_HANDLE> = created
        .into_iter()
        .filter(|h| h & (1 << 30) != 0 && h & (1 << 31) == 0)
        .collect();
    if let Err(e) = w.restore(&stored) {
        w.reset(&e);
        return;
    }
    if w.created_assets > MAX_CREATED_ASSETS {
        w.reset("many assets created");
    }
}

fuzz_target!(
    init: {
        // Before the first input: the set-up's one-time allocations (the
        // loaded backing module, the interface copy C_GetInterface hands
        // out) live for the process, and are no input's leak.
        *WORLD.lock().unwrap_or_else(|e| e.into_inner()) = Some(World::new());
    },
    |data: &[u8]| {
        let mut slot = WORLD.lock().unwrap_or_else(|e| e.into_inner());
        let w = slot.as_mut().expect("set up in init");
        run(w, data);
    }
);
