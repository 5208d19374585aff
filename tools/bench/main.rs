//! `p11bench`: a PKCS#11 load generator. Loads any module, logs in, finds a
//! key by label, and runs one scenario for a number of client threads,
//! printing one line: throughput, latency percentiles and peak RSS (and,
//! given the provider's log, its backing HSM calls and audit fsyncs).
//!
//! ```text
//! p11bench --module M --token LABEL --key LABEL --op sign|child-sign|cold-sign|gcm|hmac
//!          [--threads N] [--seconds S] [--pin-file F] [--stats-log FILE]
//!          [--start-at UNIX_MS] [--path m/44'/0'/0'/0/0]
//! p11bench --module M --token LABEL --key LABEL --op has-ed25519|make-ed25519-key|make-hmac-key
//! ```
//!
//! - `sign`: each thread opens a session, then loops `C_SignInit` + `C_Sign`
//!   over a 32-byte digest (warm signing): `CKM_ECDSA` on an EC key,
//!   `CKM_EDDSA` (the 32 bytes as the message) on an Ed25519 key.
//! - `child-sign`: each thread opens a session, derives the HD child at
//!   `--path` of the key once (`C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD`,
//!   p11derive only), then signs with the child as `sign` does. The line adds
//!   `derive_us` (the median of the threads' `C_DeriveKey` times).
//! - `has-ed25519`: prints `ed25519=yes` or `ed25519=no`: whether the token
//!   lists both `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA`.
//! - `make-ed25519-key`: generates a token Ed25519 key pair labelled `--key`.
//! - `cold-sign`: each operation opens a session, finds the key, signs and
//!   closes the session (with p11derive run with `[cache] ttl_seconds = 0`,
//!   every operation derives its key through the backing HSM).
//! - `gcm`: `C_EncryptInit(CKM_AES_GCM, 12-byte IV, 128-bit tag)` +
//!   `C_Encrypt` of 4 KiB.
//! - `hmac`: `C_SignInit(CKM_SHA256_HMAC)` + `C_Sign` of 4 KiB.
//!
//! The PIN comes from `--pin-file` or `$P11BENCH_PIN`.
//!
//! `--start-at` starts the measured interval at that wall-clock time (Unix
//! milliseconds) instead of 0.5 s after the threads start, so processes
//! started together measure the same interval (tools/bench.sh's multi-host
//! scenarios); the threads run from their start, the time before it is
//! warm-up.
//!
//! From the provider's log (`--stats-log`) it adds per-1000-operation counts
//! and, for a PostgreSQL store, the signature commits and the round trips the
//! provider counted for them (`sig_commits`, `pg_round_trips`, both over the
//! whole run, warm-up included).

use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p11derive::ck::*;

struct Module {
    _lib: libloading::Library,
    f: &'static CK_FUNCTION_LIST,
}

macro_rules! call {
    ($m:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        // SAFETY: arguments are valid for the call (see each caller).
        unsafe { ($m.f.$f.expect(stringify!($f)))($($a),*) }
    };
}

fn ok(rv: CK_RV, what: &str) {
    if rv != CKR_OK {
        eprintln!("p11bench: {what} failed: rv 0x{rv:x}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Sign,
    ColdSign,
    Gcm,
    Hmac,
    /// Signing with an HD child of the key, derived once per thread.
    ChildSign,
    /// Creates a token HMAC key (generic secret, sign/verify) labelled
    /// `--key`: pkcs11-tool 0.23 cannot make one that signs.
    MakeHmacKey,
    /// Creates a token Ed25519 key pair labelled `--key`.
    MakeEd25519Key,
    /// Says whether the token signs Ed25519.
    HasEd25519,
}

struct Args {
    module: String,
    token: String,
    key: String,
    op: Op,
    threads: usize,
    seconds: f64,
    pin: Vec<u8>,
    stats_log: Option<String>,
    start_at: Option<u64>,
    /// The HD path of `child-sign`, as `CK_ULONG` indices.
    path: Vec<CK_ULONG>,
}

fn usage() -> ! {
    eprintln!(
        "usage: p11bench --module M --token LABEL --key LABEL \
         --op sign|child-sign|cold-sign|gcm|hmac|has-ed25519|make-ed25519-key|make-hmac-key \
         [--threads N] [--seconds S] [--pin-file F] [--stats-log FILE] [--start-at UNIX_MS] \
         [--path m/44'/0'/0'/0/0]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let op = match get("--op").as_deref() {
        Some("sign") => Op::Sign,
        Some("child-sign") => Op::ChildSign,
        Some("has-ed25519") => Op::HasEd25519,
        Some("make-ed25519-key") => Op::MakeEd25519Key,
        Some("cold-sign") => Op::ColdSign,
        Some("gcm") => Op::Gcm,
        Some("hmac") => Op::Hmac,
        Some("make-hmac-key") => Op::MakeHmacKey,
        _ => usage(),
    };
    let pin = match get("--pin-file") {
        Some(f) => std::fs::read(f).unwrap_or_else(|e| {
            eprintln!("p11bench: cannot read the PIN file: {e}");
            std::process::exit(2)
        }),
        None => std::env::var("P11BENCH_PIN")
            .unwrap_or_default()
            .into_bytes(),
    };
    let pin = pin
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    Args {
        module: get("--module").unwrap_or_else(|| usage()),
        token: get("--token").unwrap_or_else(|| usage()),
        key: get("--key").unwrap_or_else(|| usage()),
        op,
        threads: get("--threads").and_then(|t| t.parse().ok()).unwrap_or(1),
        seconds: get("--seconds").and_then(|t| t.parse().ok()).unwrap_or(5.0),
        pin,
        stats_log: get("--stats-log"),
        start_at: get("--start-at").map(|t| t.parse().unwrap_or_else(|_| usage())),
        path: match (op, get("--path")) {
            (Op::ChildSign, Some(p)) => parse_path(&p),
            (Op::ChildSign, None) => {
                eprintln!("p11bench: --op child-sign needs --path (for example m/44'/0'/0'/0/0)");
                std::process::exit(2)
            }
            _ => Vec::new(),
        },
    }
}

/// `m/44'/0'/0'/0/0` as `CK_ULONG` indices (`'` or `h` marks a hardened one).
fn parse_path(text: &str) -> Vec<CK_ULONG> {
    let bad = |why: &str| -> ! {
        eprintln!("p11bench: --path {text:?}: {why}; write it as m/44'/0'/0'/0/0");
        std::process::exit(2)
    };
    let mut parts = text.split('/');
    if parts.next() != Some("m") {
        bad("it does not start with m/");
    }
    let indices: Vec<CK_ULONG> = parts
        .map(|part| {
            let (digits, hardened) = match part.strip_suffix(['\'', 'h']) {
                Some(d) => (d, true),
                None => (part, false),
            };
            let i: u32 = digits
                .parse()
                .ok()
                .filter(|i| *i < 0x8000_0000)
                .unwrap_or_else(|| bad(&format!("{part:?} is not an index below 2^31")));
            CK_ULONG::from(i) | if hardened { CKP11D_HARDENED } else { 0 }
        })
        .collect();
    if indices.is_empty() {
        bad("it has no index");
    }
    indices
}

fn load(path: &str) -> Module {
    // SAFETY: loading the module under test.
    let lib = unsafe { libloading::Library::new(path) }.unwrap_or_else(|e| {
        eprintln!("p11bench: cannot load {path}: {e}");
        std::process::exit(1)
    });
    let f = {
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.expect("C_GetFunctionList");
        let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        ok(unsafe { get(&mut list) }, "C_GetFunctionList");
        // SAFETY: the table lives as long as the library, which is never unloaded here.
        unsafe { &*list }
    };
    Module { _lib: lib, f }
}

/// The slot of the token labelled `token`. A module whose `C_GetTokenInfo`
/// fails is asked again a few times: SoftHSM's file store answers
/// `CKR_GENERAL_ERROR` now and then while another process writes the token
/// (p11derive's rollback anchor, moved by the other "hosts" of the
/// multi-host benchmark), and p11derive passes that on as
/// `CKR_DEVICE_ERROR`. Each retry is said on stderr.
fn slot_of(m: &Module, token: &str) -> CK_SLOT_ID {
    for attempt in 1..=10 {
        match find_slot(m, token) {
            Ok(slot) => return slot,
            Err(Some(rv)) if attempt < 10 => {
                eprintln!(
                    "p11bench: C_GetTokenInfo failed (rv 0x{rv:x}), asking again ({attempt} of 9)"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(Some(rv)) => {
                eprintln!("p11bench: C_GetTokenInfo failed (rv 0x{rv:x}) 10 times");
                std::process::exit(1)
            }
            Err(None) => break,
        }
    }
    eprintln!("p11bench: no token labelled {token:?}");
    std::process::exit(1)
}

/// `Err(Some(rv))`: a slot's `C_GetTokenInfo` failed; `Err(None)`: no slot
/// has the token.
fn find_slot(m: &Module, token: &str) -> Result<CK_SLOT_ID, Option<CK_RV>> {
    let mut n: CK_ULONG = 0;
    ok(
        call!(
            m,
            C_GetSlotList(CK_TRUE as CK_BBOOL, ptr::null_mut(), &mut n)
        ),
        "C_GetSlotList",
    );
    let mut slots = vec![0; n as usize];
    ok(
        call!(
            m,
            C_GetSlotList(CK_TRUE as CK_BBOOL, slots.as_mut_ptr(), &mut n)
        ),
        "C_GetSlotList",
    );
    let mut failed = None;
    for slot in slots {
        // SAFETY: plain data filled by the call.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        match call!(m, C_GetTokenInfo(slot, &mut info)) {
            CKR_OK if String::from_utf8_lossy(&info.label).trim_end() == token => return Ok(slot),
            CKR_OK | CKR_TOKEN_NOT_PRESENT => {}
            rv => failed = Some(rv),
        }
    }
    Err(failed)
}

fn open(m: &Module, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut h = 0;
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    ok(
        call!(m, C_OpenSession(slot, flags, ptr::null_mut(), None, &mut h)),
        "C_OpenSession",
    );
    h
}

fn find(m: &Module, h: CK_SESSION_HANDLE, label: &str, class: CK_OBJECT_CLASS) -> CK_OBJECT_HANDLE {
    let mut class = class;
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut _,
            ulValueLen: size_of::<CK_OBJECT_CLASS>() as _,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr() as *mut _,
            ulValueLen: label.len() as _,
        },
    ];
    ok(
        call!(m, C_FindObjectsInit(h, t.as_mut_ptr(), 2)),
        "C_FindObjectsInit",
    );
    let mut found = [0; 1];
    let mut n = 0;
    ok(
        call!(m, C_FindObjects(h, found.as_mut_ptr(), 1, &mut n)),
        "C_FindObjects",
    );
    ok(call!(m, C_FindObjectsFinal(h)), "C_FindObjectsFinal");
    if n != 1 {
        eprintln!("p11bench: no key labelled {label:?}");
        std::process::exit(1);
    }
    found[0]
}

/// The key's `CKA_KEY_TYPE`.
fn key_type(m: &Module, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_KEY_TYPE {
    let mut kt: CK_KEY_TYPE = 0;
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_KEY_TYPE,
        pValue: &mut kt as *mut _ as *mut _,
        ulValueLen: size_of::<CK_KEY_TYPE>() as _,
    }];
    ok(
        call!(m, C_GetAttributeValue(h, key, t.as_mut_ptr(), 1)),
        "C_GetAttributeValue(CKA_KEY_TYPE)",
    );
    kt
}

/// The signature mechanism of a key type: ECDSA over the digest, or EdDSA.
fn sign_mechanism(kt: CK_KEY_TYPE) -> CK_MECHANISM_TYPE {
    if kt == CKK_EC_EDWARDS {
        CKM_EDDSA
    } else {
        CKM_ECDSA
    }
}

/// Whether the token lists both Ed25519 key generation and EdDSA.
fn has_ed25519(m: &Module, slot: CK_SLOT_ID) -> bool {
    let mut n: CK_ULONG = 0;
    ok(
        call!(m, C_GetMechanismList(slot, ptr::null_mut(), &mut n)),
        "C_GetMechanismList",
    );
    let mut list = vec![0; n as usize];
    ok(
        call!(m, C_GetMechanismList(slot, list.as_mut_ptr(), &mut n)),
        "C_GetMechanismList",
    );
    list.truncate(n as usize);
    list.contains(&CKM_EC_EDWARDS_KEY_PAIR_GEN) && list.contains(&CKM_EDDSA)
}

/// The HD child at `path` of `key` (a session object), and how long
/// `C_DeriveKey` took.
fn derive_child(
    m: &Module,
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    path: &[CK_ULONG],
) -> (CK_OBJECT_HANDLE, Duration) {
    let mut indices = path.to_vec();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_P11DERIVE_HD_CHILD,
        pParameter: indices.as_mut_ptr() as *mut _,
        ulParameterLen: (indices.len() * size_of::<CK_ULONG>()) as _,
    };
    let mut child = 0;
    let t0 = Instant::now();
    ok(
        call!(
            m,
            C_DeriveKey(h, &mut mech, key, ptr::null_mut(), 0, &mut child)
        ),
        "C_DeriveKey(CKM_P11DERIVE_HD_CHILD)",
    );
    (child, t0.elapsed())
}

/// One operation; the IV counter makes each GCM IV unique. `sign` is the
/// signature mechanism of the signing ops.
fn once(
    m: &Module,
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    op: Op,
    sign: CK_MECHANISM_TYPE,
    n: u64,
    data: &mut [u8],
) {
    let mut out = [0u8; 4096 + 64];
    let mut len = out.len() as CK_ULONG;
    match op {
        Op::Sign | Op::ColdSign | Op::ChildSign => {
            let mut mech = CK_MECHANISM {
                mechanism: sign,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            data[..8].copy_from_slice(&n.to_be_bytes());
            ok(call!(m, C_SignInit(h, &mut mech, key)), "C_SignInit");
            ok(
                call!(
                    m,
                    C_Sign(h, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len)
                ),
                "C_Sign",
            );
        }
        Op::Hmac => {
            let mut mech = CK_MECHANISM {
                mechanism: CKM_SHA256_HMAC,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            ok(call!(m, C_SignInit(h, &mut mech, key)), "C_SignInit(HMAC)");
            let rv = call!(
                m,
                C_Sign(h, data.as_mut_ptr(), 4096, out.as_mut_ptr(), &mut len)
            );
            ok(rv, "C_Sign(HMAC)");
        }
        Op::MakeHmacKey | Op::MakeEd25519Key | Op::HasEd25519 => {}
        Op::Gcm => {
            // p11derive refuses an IV used before under the key, in any run:
            // this run's id, then the thread's counter.
            let mut iv = [0u8; 12];
            iv[..4].copy_from_slice(&run_id().to_be_bytes());
            iv[4..].copy_from_slice(&n.to_be_bytes());
            let mut params = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: &mut params as *mut _ as *mut _,
                ulParameterLen: size_of::<CK_GCM_PARAMS>() as _,
            };
            ok(call!(m, C_EncryptInit(h, &mut mech, key)), "C_EncryptInit");
            let rv = call!(
                m,
                C_Encrypt(h, data.as_mut_ptr(), 4096, out.as_mut_ptr(), &mut len)
            );
            ok(rv, "C_Encrypt");
        }
    }
}

/// An id for this run, different from earlier runs' (the clock and the
/// process id), for GCM IVs.
fn run_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_secs() as u32).wrapping_mul(1_000_003) ^ now.subsec_nanos() ^ std::process::id()
    })
}

fn make_hmac_key(m: &Module, h: CK_SESSION_HANDLE, label: &str) {
    let (mut t, mut class, mut kt, mut len) =
        (CK_TRUE, CKO_SECRET_KEY, CKK_GENERIC_SECRET, 32 as CK_ULONG);
    let u = size_of::<CK_ULONG>() as CK_ULONG;
    let attr = |ty, p: *mut std::ffi::c_void, l| CK_ATTRIBUTE {
        type_: ty,
        pValue: p,
        ulValueLen: l,
    };
    let tp = &mut t as *mut _ as *mut _;
    let mut template = [
        attr(CKA_CLASS, &mut class as *mut _ as *mut _, u),
        attr(CKA_KEY_TYPE, &mut kt as *mut _ as *mut _, u),
        attr(CKA_VALUE_LEN, &mut len as *mut _ as *mut _, u),
        attr(CKA_LABEL, label.as_ptr() as *mut _, label.len() as _),
        attr(CKA_TOKEN, tp, 1),
        attr(CKA_PRIVATE, tp, 1),
        attr(CKA_SENSITIVE, tp, 1),
        attr(CKA_SIGN, tp, 1),
        attr(CKA_VERIFY, tp, 1),
    ];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_GENERIC_SECRET_KEY_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut key = 0;
    let n = template.len() as CK_ULONG;
    ok(
        call!(
            m,
            C_GenerateKey(h, &mut mech, template.as_mut_ptr(), n, &mut key)
        ),
        "C_GenerateKey",
    );
    println!("created HMAC key {label:?}");
}

fn make_ed25519_key(m: &Module, h: CK_SESSION_HANDLE, label: &str) {
    let mut t = CK_TRUE;
    let tp = &mut t as *mut _ as *mut std::ffi::c_void;
    // DER of the OID 1.3.101.112 (id-Ed25519).
    let mut params = [0x06u8, 0x03, 0x2b, 0x65, 0x70];
    let attr = |ty, p: *mut std::ffi::c_void, l| CK_ATTRIBUTE {
        type_: ty,
        pValue: p,
        ulValueLen: l,
    };
    let l = label.as_ptr() as *mut _;
    let mut public = [
        attr(CKA_EC_PARAMS, params.as_mut_ptr() as *mut _, 5),
        attr(CKA_LABEL, l, label.len() as _),
        attr(CKA_TOKEN, tp, 1),
        attr(CKA_VERIFY, tp, 1),
    ];
    let mut private = [
        attr(CKA_LABEL, l, label.len() as _),
        attr(CKA_TOKEN, tp, 1),
        attr(CKA_PRIVATE, tp, 1),
        attr(CKA_SENSITIVE, tp, 1),
        attr(CKA_SIGN, tp, 1),
    ];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_EC_EDWARDS_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut pubk, mut privk) = (0, 0);
    let (np, nq) = (public.len() as CK_ULONG, private.len() as CK_ULONG);
    ok(
        call!(
            m,
            C_GenerateKeyPair(
                h,
                &mut mech,
                public.as_mut_ptr(),
                np,
                private.as_mut_ptr(),
                nq,
                &mut pubk,
                &mut privk
            )
        ),
        "C_GenerateKeyPair(CKM_EC_EDWARDS_KEY_PAIR_GEN)",
    );
    println!("created Ed25519 key pair {label:?}");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `(derivations, backing HSM calls, of which the anchor's, audit fsyncs)`
/// from the provider's finalize line.
fn provider_stats(log: &str) -> Option<(u64, u64, u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("backing HSM calls: "))?;
    let num = |key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((
        num("keys derived through the backing HSM: ")?,
        num("backing HSM calls: ")?,
        num("rollback anchor: ")?,
        num("audit fsyncs: ")?,
    ))
}

/// `(records, commits)` from the provider's last line
/// `audit: R signature records in C commits (...)`.
fn signature_commits(log: &str) -> Option<(u64, u64)> {
    let rest = log.lines().rev().find_map(|l| {
        l.split("audit: ")
            .nth(1)
            .filter(|r| r.contains(" signature records in "))
    })?;
    let mut words = rest.split_whitespace();
    let records = words.next()?.parse().ok()?;
    let commits = words.nth(3)?.parse().ok()?;
    Some((records, commits))
}

fn main() {
    let a = parse();
    let m = Arc::new(load(&a.module));
    let mut init = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: ptr::null_mut(),
    };
    ok(
        call!(m, C_Initialize(&mut init as *mut _ as *mut _)),
        "C_Initialize",
    );
    let slot = slot_of(&m, &a.token);
    if a.op == Op::HasEd25519 {
        let yes = has_ed25519(&m, slot);
        ok(call!(m, C_Finalize(ptr::null_mut())), "C_Finalize");
        println!("ed25519={}", if yes { "yes" } else { "no" });
        return;
    }
    let main = open(&m, slot);
    let rv = call!(
        m,
        C_Login(main, CKU_USER, a.pin.as_ptr() as *mut _, a.pin.len() as _)
    );
    ok(rv, "C_Login");
    if matches!(a.op, Op::MakeHmacKey | Op::MakeEd25519Key) {
        if a.op == Op::MakeHmacKey {
            make_hmac_key(&m, main, &a.key);
        } else {
            make_ed25519_key(&m, main, &a.key);
        }
        ok(call!(m, C_Logout(main)), "C_Logout");
        ok(call!(m, C_Finalize(ptr::null_mut())), "C_Finalize");
        return;
    }
    let class = match a.op {
        Op::Sign | Op::ColdSign | Op::ChildSign => CKO_PRIVATE_KEY,
        _ => CKO_SECRET_KEY,
    };
    let key = find(&m, main, &a.key, class);
    let sign = match a.op {
        Op::Sign | Op::ColdSign | Op::ChildSign => sign_mechanism(key_type(&m, main, key)),
        _ => 0,
    };

    // A short warm-up (first derivation, caches, page faults), then the run.
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..a.threads)
        .map(|t| {
            let (m, stop, measuring) = (m.clone(), stop.clone(), measuring.clone());
            let (op, label, path) = (a.op, a.key.clone(), a.path.clone());
            std::thread::spawn(move || {
                let mut data = vec![t as u8; 4096];
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
                let session = open(&m, slot);
                // The child, derived once in this thread's session.
                let (key, derive) = match op {
                    Op::ChildSign => derive_child(&m, session, key, &path),
                    _ => (key, Duration::ZERO),
                };
                let mut n: u64 = (t as u64) << 40;
                let mut all: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let t0 = Instant::now();
                    if op == Op::ColdSign {
                        let h = open(&m, slot);
                        let k = find(&m, h, &label, CKO_PRIVATE_KEY);
                        once(&m, h, k, op, sign, n, &mut data);
                        ok(call!(m, C_CloseSession(h)), "C_CloseSession");
                    } else {
                        once(&m, session, key, op, sign, n, &mut data);
                    }
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                    }
                    all += 1;
                }
                ok(call!(m, C_CloseSession(session)), "C_CloseSession");
                (lat, all, derive)
            })
        })
        .collect();
    match a.start_at {
        None => std::thread::sleep(Duration::from_millis(500)),
        Some(at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            match Duration::from_millis(at).checked_sub(now) {
                Some(wait) => std::thread::sleep(wait),
                None => eprintln!(
                    "p11bench: --start-at {at} passed {} ms before the threads started: measuring \
                     from now (start the processes earlier)",
                    now.as_millis().saturating_sub(at as u128)
                ),
            }
        }
    }
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = Vec::new();
    let mut all_ops: u64 = 0;
    let mut derives = Vec::new();
    for w in workers {
        let (l, n, d) = w.join().expect("worker");
        lat.extend(l);
        all_ops += n;
        derives.push(d);
    }
    ok(call!(m, C_Logout(main)), "C_Logout");
    ok(call!(m, C_CloseSession(main)), "C_CloseSession");
    ok(call!(m, C_Finalize(ptr::null_mut())), "C_Finalize");
    lat.sort_unstable();
    let ops = lat.len();
    let pct = |p: f64| -> f64 {
        if ops == 0 {
            return 0.0;
        }
        lat[((ops as f64 * p) as usize).min(ops - 1)] as f64 / 1000.0
    };
    let mut line = format!(
        "op={} threads={} ops={} ops_per_s={:.0} p50_us={:.0} p99_us={:.0} p999_us={:.0} peak_rss_kib={}",
        match a.op {
            Op::Sign => "sign",
            Op::ChildSign => "child-sign",
            Op::ColdSign => "cold-sign",
            Op::Gcm => "gcm-4k",
            Op::Hmac => "hmac-4k",
            Op::MakeHmacKey | Op::MakeEd25519Key | Op::HasEd25519 => "setup",
        },
        a.threads,
        ops,
        ops as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        peak_rss_kib()
    );
    if a.op == Op::ChildSign {
        derives.sort_unstable();
        let mid = derives[derives.len() / 2];
        line.push_str(&format!(" derive_us={:.0}", mid.as_secs_f64() * 1e6));
    }
    if let Some(log) = &a.stats_log {
        // The counts cover the whole run: warm-up operations count too.
        if let Some((derived, calls, anchor, fsyncs)) = provider_stats(log) {
            let total = all_ops.max(1) as f64;
            line.push_str(&format!(
                " derivations_per_1k={:.2} hsm_calls_per_1k={:.2} anchor_calls_per_1k={:.2} \
                 other_hsm_calls_per_1k={:.2} fsyncs_per_1k={:.1}",
                derived as f64 * 1000.0 / total,
                calls as f64 * 1000.0 / total,
                anchor as f64 * 1000.0 / total,
                (calls - anchor) as f64 * 1000.0 / total,
                fsyncs as f64 * 1000.0 / total
            ));
        }
        // A PostgreSQL store: round trips of the signature commits.
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((records, commits)) = signature_commits(&text) {
            line.push_str(&format!(" sig_records={records} sig_commits={commits}"));
        }
        let trips = text
            .lines()
            .rev()
            .find_map(|l| l.split("PostgreSQL round trips: ").nth(1))
            .and_then(|t| {
                t.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
        if let Some(trips) = trips {
            line.push_str(&format!(
                " pg_round_trips_per_1k={:.1} pg_round_trips={trips}",
                trips as f64 * 1000.0 / all_ops.max(1) as f64
            ));
        }
    }
    println!("{line}");
}
