//! Locked memory for secrets (design §4 "Memory").
//!
//! Every secret the provider holds — PRF outputs from the backing HSM, derived
//! scalars and secret keys, the audit key, PINs the CLI reads — lives in one
//! arena per process: a single anonymous mapping of `[memory] locked_kib`,
//! locked into RAM (`mlock`: never swapped), excluded from core dumps
//! (`MADV_DONTDUMP`), wiped in a forked child (`MADV_WIPEONFORK`) and fenced
//! by an inaccessible guard page on each side. It is carved into 32-byte
//! chunks; a [`Secret`] or [`SecretBytes`] owns a run of chunks and wipes
//! them (volatile writes) before giving them back when dropped.
//!
//! Computations on secrets run on secret stacks ([`confined`]): locked,
//! non-dumpable, guarded and wiped after each use, so the temporaries that
//! libraries make of key bytes never land on an ordinary thread stack.
//!
//! The arena is mapped at `C_Initialize` ([`configure`]) and kept for the
//! life of the process (it is empty between `C_Finalize` and the next
//! `C_Initialize`). Code that allocates before any configuration (the unit
//! tests, the vector tests) gets an arena of the default size, locked.

mod arena;
mod prompt;
mod stack;

pub use arena::{
    capacity, configure, degraded, in_use, region, secret, Secret, SecretBytes, CHUNK, DEFAULT_KIB,
};
pub use prompt::{prompt_secret, read_line_secret};
pub use stack::{confined, confined_at, Depth};

/// Copies an environment variable into the arena, read in place from the
/// environment block (`std::env::var` would copy it into a heap `String`).
/// `Ok(None)` when it is unset.
pub fn from_env(name: &str) -> Result<Option<SecretBytes>, String> {
    let name = std::ffi::CString::new(name).map_err(|_| "a variable name with NUL")?;
    // SAFETY: getenv returns a pointer into the environment or null; the
    // bytes are copied at once (callers read their secrets before starting
    // threads that could change the environment).
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated string from getenv.
    let bytes = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    let mut out = SecretBytes::with_capacity(bytes.len())?;
    out.push(bytes);
    Ok(Some(out))
}

/// Whether an environment variable is set and not empty, without copying
/// its value anywhere (`std::env::var_os` would copy a PIN to the heap).
pub fn env_is_set(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: getenv returns a pointer into the environment or null; only
    // its first byte is read, at once.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        !value.is_null() && *value != 0
    }
}

/// Flags and locked size of the mapping holding `addr`, from smaps (tests).
#[cfg(test)]
pub(crate) fn mapping_of(addr: usize) -> (usize, usize, String) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut current = None;
    let (mut locked_kb, mut size) = (0, 0);
    for line in smaps.lines() {
        let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((a, b)) = range {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                current = Some((a..b).contains(&addr));
                if current == Some(true) {
                    size = b - a;
                }
                continue;
            }
        }
        if current == Some(true) {
            if let Some(v) = line.strip_prefix("Locked:") {
                locked_kb = v.trim().trim_end_matches(" kB").parse().unwrap();
            }
            if let Some(v) = line.strip_prefix("VmFlags:") {
                return (size, locked_kb, v.to_string());
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}
