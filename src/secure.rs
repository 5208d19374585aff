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

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use zeroize::Zeroize;

use crate::process::{self, PerProcess};

/// The allocation unit: one 32-byte key per chunk.
pub const CHUNK: usize = 32;
/// The arena's size when nothing configured it (the config's default).
pub const DEFAULT_KIB: u64 = 1024;

/// Set when the operator allowed running without locked memory and locking
/// failed: the arena is then used unlocked (still guarded and non-dumpable).
static DEGRADED: AtomicBool = AtomicBool::new(false);

struct Arena {
    /// First usable byte, one guard page after the mapping's start.
    data: *mut u8,
    /// Usable bytes (a whole number of pages).
    len: usize,
    page: usize,
    locked: bool,
    /// One bit per chunk, set while allocated (not secret: ordinary heap).
    used: Vec<u64>,
    in_use: usize,
    /// Where the next search for free chunks starts.
    hint: usize,
}

// SAFETY: the mapping is owned by the arena; access is serialized by the
// mutex around it (allocation bookkeeping) or by ownership of a chunk run.
unsafe impl Send for Arena {}

static ARENA: PerProcess<Mutex<Option<Arena>>> = PerProcess::new(|| Mutex::new(None));

fn arena() -> std::sync::MutexGuard<'static, Option<Arena>> {
    ARENA.get().lock().unwrap_or_else(|e| e.into_inner())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn memlock_limit_kib() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    limit.rlim_cur / 1024
}

impl Arena {
    fn map(kib: u64, allow_unlocked: bool) -> Result<Arena, String> {
        let page = page_size();
        let len = ((kib as usize * 1024).div_ceil(page)).max(1) * page;
        // SAFETY: a fresh anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len + 2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "cannot map {kib} KiB for secrets ({}): lower [memory] locked_kib",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: every address below lies inside the mapping just made.
        let data = unsafe { (base as *mut u8).add(page) };
        let unmap = || unsafe {
            libc::munmap(base, len + 2 * page);
        };
        let fail = |what: &str| {
            let e = std::io::Error::last_os_error();
            unmap();
            Err(format!("cannot {what} for the secrets arena ({e})"))
        };
        // SAFETY: guard pages and the data region belong to this mapping.
        unsafe {
            if libc::mprotect(base, page, libc::PROT_NONE) != 0
                || libc::mprotect(data.add(len) as *mut _, page, libc::PROT_NONE) != 0
            {
                return fail("set guard pages");
            }
            if libc::madvise(data as *mut _, len, libc::MADV_DONTDUMP) != 0 {
                return fail("exclude memory from core dumps");
            }
            // A forked child sees zeros here, never its parent's keys. Linux
            // before 4.14 lacks it; the child re-initializes regardless.
            libc::madvise(data as *mut _, len, libc::MADV_WIPEONFORK);
        }
        // SAFETY: locking the data region of this mapping.
        let locked = unsafe { libc::mlock(data as *const _, len) } == 0;
        if !locked && !allow_unlocked {
            let e = std::io::Error::last_os_error();
            unmap();
            return Err(format!(
                "cannot lock {kib} KiB of memory for secrets ({e}; RLIMIT_MEMLOCK is {} KiB): \
                 raise RLIMIT_MEMLOCK to at least {kib} KiB (ulimit -l, LimitMEMLOCK= for a \
                 systemd service), lower [memory] locked_kib, or set [memory] allow_unlocked = \
                 true to run degraded (secrets could then be swapped to disk)",
                memlock_limit_kib()
            ));
        }
        let chunks = len / CHUNK;
        Ok(Arena {
            data,
            len,
            page,
            locked,
            used: vec![0; chunks.div_ceil(64)],
            in_use: 0,
            hint: 0,
        })
    }

    fn chunks(&self) -> usize {
        self.len / CHUNK
    }

    fn is_free(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) == 0
    }

    fn mark(&mut self, start: usize, n: usize, used: bool) {
        for i in start..start + n {
            if used {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
        if used {
            self.in_use += n;
        } else {
            self.in_use -= n;
        }
    }

    /// First fit for `n` contiguous chunks, from the hint round to it.
    fn take(&mut self, n: usize) -> Option<usize> {
        let total = self.chunks();
        if n == 0 || n > total - self.in_use {
            return None;
        }
        let mut start = if self.hint + n <= total { self.hint } else { 0 };
        let mut wrapped = false;
        loop {
            if start + n > total {
                if wrapped {
                    return None;
                }
                wrapped = true;
                start = 0;
            }
            if wrapped && start >= self.hint {
                return None;
            }
            match (start..start + n).find(|&i| !self.is_free(i)) {
                None => {
                    self.mark(start, n, true);
                    self.hint = start + n;
                    return Some(start);
                }
                Some(busy) => start = busy + 1,
            }
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: wiping, unlocking and unmapping the region this arena owns;
        // it is only dropped when no chunk is in use.
        unsafe {
            std::slice::from_raw_parts_mut(self.data, self.len).zeroize();
            libc::munlock(self.data as *const _, self.len);
            libc::munmap(self.data.sub(self.page) as *mut _, self.len + 2 * self.page);
        }
    }
}

/// Maps (or keeps) this process's arena of `kib` KiB. `Ok(true)`: locked.
/// `Ok(false)`: locking failed and `allow_unlocked` let it run degraded (the
/// caller says so loudly). `Err`: a message naming the limit and the fix.
///
/// An arena still holding secrets is kept as it is: its size changes at the
/// next configuration that finds it empty.
pub fn configure(kib: u64, allow_unlocked: bool) -> Result<bool, String> {
    let mut slot = arena();
    let page = page_size();
    let want = ((kib as usize * 1024).div_ceil(page)).max(1) * page;
    if let Some(a) = slot.as_ref() {
        if a.in_use > 0 && !a.locked && !allow_unlocked {
            // Still holding secrets from a degraded run: this configuration
            // forbids running unlocked, so it fails closed.
            return Err(format!(
                "the memory for secrets is not locked and still in use, and [memory] \
                 allow_unlocked is false: raise RLIMIT_MEMLOCK to at least {kib} KiB and restart"
            ));
        }
        if a.in_use > 0 || (a.len == want && (a.locked || allow_unlocked)) {
            DEGRADED.store(!a.locked, Ordering::SeqCst);
            let locked = a.locked;
            drop(slot);
            prepare_stacks(allow_unlocked || !locked)?;
            return Ok(locked);
        }
    }
    *slot = None;
    let a = Arena::map(kib, allow_unlocked)?;
    let locked = a.locked;
    DEGRADED.store(!locked, Ordering::SeqCst);
    *slot = Some(a);
    drop(slot);
    prepare_stacks(allow_unlocked || !locked)?;
    Ok(locked)
}

/// Whether the arena runs unlocked because the config allowed it.
pub fn degraded() -> bool {
    DEGRADED.load(Ordering::SeqCst)
}

/// The arena's capacity in 32-byte secrets (0 before it is mapped).
pub fn capacity() -> usize {
    arena().as_ref().map_or(0, Arena::chunks)
}

/// Chunks allocated now (for tests and diagnostics).
pub fn in_use() -> usize {
    arena().as_ref().map_or(0, |a| a.in_use)
}

/// The arena's data range, `(start, len)`, for tests that inspect it.
pub fn region() -> Option<(usize, usize)> {
    arena().as_ref().map(|a| (a.data as usize, a.len))
}

/// A run of zeroed chunks in the arena, owned until dropped.
struct Run {
    ptr: NonNull<u8>,
    start: usize,
    chunks: usize,
    /// The process generation that allocated it: a forked child neither
    /// wipes nor frees its parent's runs (its copy is already zeros).
    generation: u64,
}

// SAFETY: a run is exclusively owned memory inside the arena.
unsafe impl Send for Run {}
unsafe impl Sync for Run {}

impl Run {
    fn new(bytes: usize) -> Result<Run, String> {
        let n = bytes.div_ceil(CHUNK).max(1);
        let mut slot = arena();
        if slot.is_none() {
            *slot = Some(Arena::map(DEFAULT_KIB, false)?);
        }
        let a = slot.as_mut().expect("mapped above");
        let start = a.take(n).ok_or_else(|| {
            format!(
                "the locked memory for secrets is full ({} KiB, {} of {} chunks in use): raise \
                 [memory] locked_kib",
                a.len / 1024,
                a.in_use,
                a.chunks()
            )
        })?;
        // SAFETY: `take` returned chunks inside the data region.
        let p = unsafe { a.data.add(start * CHUNK) };
        Ok(Run {
            ptr: NonNull::new(p).expect("inside a mapping"),
            start,
            chunks: n,
            generation: process::generation(),
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.generation != process::generation() {
            return;
        }
        // SAFETY: this run owns `chunks` chunks at `ptr`, mapped until the
        // arena is dropped, which only happens when no run is alive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.chunks * CHUNK) }.zeroize();
        if let Some(a) = arena().as_mut() {
            a.mark(self.start, self.chunks, false);
        }
    }
}

/// `N` secret bytes in the arena: zeroed when made, wiped when dropped.
pub struct Secret<const N: usize>(Run);

/// A zeroed secret for code that reports PKCS#11 errors: a full or
/// unlockable arena is `CKR_HOST_MEMORY` with the message saying what to raise.
pub fn secret<const N: usize>() -> crate::error::Result<Secret<N>> {
    Secret::new().map_err(|m| crate::error::Error::with(crate::ck::CKR_HOST_MEMORY, m))
}

impl<const N: usize> Secret<N> {
    /// Zeroed bytes in the arena; fails when it is full or cannot be mapped
    /// (the message says what to raise).
    pub fn new() -> Result<Self, String> {
        Run::new(N).map(Secret)
    }

    /// A copy of `bytes` in the arena (tests, known values).
    pub fn copy_of(bytes: &[u8; N]) -> Result<Self, String> {
        let mut s = Self::new()?;
        s.copy_from_slice(bytes);
        Ok(s)
    }

    /// Where the secret lives, for tests that inspect the mapping.
    pub fn address(&self) -> usize {
        self.0.ptr.as_ptr() as usize
    }
}

impl<const N: usize> std::ops::Deref for Secret<N> {
    type Target = [u8; N];
    fn deref(&self) -> &[u8; N] {
        // SAFETY: the run holds at least N bytes, zero-initialized, aligned
        // to 1; only this value refers to it.
        unsafe { &*(self.0.ptr.as_ptr() as *const [u8; N]) }
    }
}

impl<const N: usize> std::ops::DerefMut for Secret<N> {
    fn deref_mut(&mut self) -> &mut [u8; N] {
        // SAFETY: as in `deref`, with `&mut self` for exclusive access.
        unsafe { &mut *(self.0.ptr.as_ptr() as *mut [u8; N]) }
    }
}

impl<const N: usize> std::fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret<{N}>(..)")
    }
}

/// Up to `capacity` secret bytes in the arena (PINs, secrets of variable
/// length), wiped when dropped. The length grows with [`SecretBytes::push`].
pub struct SecretBytes {
    run: Run,
    len: usize,
}

impl SecretBytes {
    pub fn with_capacity(capacity: usize) -> Result<Self, String> {
        Ok(SecretBytes {
            run: Run::new(capacity)?,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.run.chunks * CHUNK
    }

    /// Appends bytes; `false` (nothing appended) when they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.capacity() - self.len {
            return false;
        }
        // SAFETY: the range lies inside the run (checked just above).
        unsafe {
            ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.run.ptr.as_ptr().add(self.len),
                bytes.len(),
            )
        };
        self.len += bytes.len();
        true
    }

    /// The unused tail, to read into in place; then [`SecretBytes::grow`].
    pub fn spare(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: inside the run, exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(self.run.ptr.as_ptr().add(self.len), cap - self.len)
        }
    }

    /// Counts `n` bytes written into [`SecretBytes::spare`] as content.
    pub fn grow(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity());
    }

    /// Keeps the first `len` bytes, wiping the rest.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let tail = self.len - len;
            self.len = len;
            self.spare()[..tail].zeroize();
        }
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the run are initialized.
        unsafe { std::slice::from_raw_parts(self.run.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.run.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.len)
    }
}

// ---- secret stacks ----------------------------------------------------------

/// The two sizes of secret stack. Wiping is the cost of every use, so hashes
/// and ciphers run on a small stack, elliptic-curve arithmetic on a deep one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// HMAC, HKDF, AES (measured: under 6 KiB).
    Small,
    /// ECDSA and EC public keys (measured: 34 KiB; 68 KiB when the first
    /// use builds the curve tables, which `mechanisms::warm_up` does
    /// beforehand on an ordinary stack).
    Deep,
}

impl Depth {
    /// The stack size in KiB: twice the deepest use measured, or more.
    /// Debug builds use several times the stack (measured: 32 KiB for GCM
    /// on the small stack), so they get more room.
    pub const fn kib(self) -> usize {
        match (self, cfg!(debug_assertions)) {
            (Depth::Small, false) => 32,
            (Depth::Deep, false) => 96,
            (Depth::Small, true) => 256,
            (Depth::Deep, true) => 1024,
        }
    }

    fn bytes(self) -> usize {
        self.kib() * 1024
    }
}

/// Stacks of each depth mapped when the arena is configured; more are mapped
/// on demand while locked memory allows, otherwise callers wait for one.
const STACKS_AT_START: usize = 2;

/// A stack for computations on secrets: locked, excluded from dumps, wiped
/// after each use, with an inaccessible guard page below it (stacks grow
/// down), so library code (k256, hmac, aes…) that copies key bytes into
/// temporaries leaves them only in locked memory, and only until the wipe.
struct SecretStack {
    /// The data region, above the guard page.
    data: *mut u8,
    depth: Depth,
    page: usize,
}

// SAFETY: a stack is owned by the pool or by the one computation using it.
unsafe impl Send for SecretStack {}

impl SecretStack {
    fn map(depth: Depth, allow_unlocked: bool) -> Result<SecretStack, String> {
        let page = page_size();
        let len = depth.bytes();
        // SAFETY: a fresh anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err("cannot map a stack for secret computations".into());
        }
        // SAFETY: the guard page and data region belong to this mapping.
        unsafe {
            let data = (base as *mut u8).add(page);
            let ok = libc::mprotect(base, page, libc::PROT_NONE) == 0
                && libc::madvise(data as *mut _, len, libc::MADV_DONTDUMP) == 0;
            libc::madvise(data as *mut _, len, libc::MADV_WIPEONFORK);
            let locked = libc::mlock(data as *const _, len) == 0;
            if !ok || (!locked && !allow_unlocked) {
                let e = std::io::Error::last_os_error();
                libc::munmap(base, len + page);
                return Err(format!(
                    "cannot lock a {} KiB stack for secret computations ({e}; RLIMIT_MEMLOCK is \
                     {} KiB): raise RLIMIT_MEMLOCK (see [memory] in the configuration reference)",
                    depth.kib(),
                    memlock_limit_kib()
                ));
            }
            Ok(SecretStack { data, depth, page })
        }
    }

    #[cfg(test)]
    fn region(&mut self) -> &mut [u8] {
        // SAFETY: the data region of this stack, not in use while borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.depth.bytes()) }
    }

    fn wipe(&mut self) {
        let len = self.depth.bytes();
        // SAFETY: the data region of this stack, not in use now. The write
        // is not optimized away (explicit_bzero), and fast (a memset).
        unsafe { libc::explicit_bzero(self.data as *mut _, len) };
    }
}

impl Drop for SecretStack {
    fn drop(&mut self) {
        self.wipe();
        let len = self.depth.bytes();
        // SAFETY: unlocking and unmapping the region this stack owns.
        unsafe {
            libc::munlock(self.data as *const _, len);
            libc::munmap(self.data.sub(self.page) as *mut _, len + self.page);
        }
    }
}

#[derive(Default)]
struct StackPool {
    free: Vec<SecretStack>,
    /// Stacks mapped in all (free or in use).
    mapped: usize,
}

/// One pool per depth, each with the condition its waiters wait on.
type Pools = [(Mutex<StackPool>, std::sync::Condvar); 2];

static STACKS: PerProcess<Pools> = PerProcess::new(|| {
    [
        (Mutex::new(StackPool::default()), std::sync::Condvar::new()),
        (Mutex::new(StackPool::default()), std::sync::Condvar::new()),
    ]
});

fn pool(depth: Depth) -> &'static (Mutex<StackPool>, std::sync::Condvar) {
    &STACKS.get()[depth as usize]
}

thread_local! {
    /// The depth of the secret stack this thread runs on, if any.
    static ON_SECRET_STACK: std::cell::Cell<Option<Depth>> = const { std::cell::Cell::new(None) };
}

/// Maps the stacks every process starts with (at `C_Initialize`).
fn prepare_stacks(allow_unlocked: bool) -> Result<(), String> {
    for depth in [Depth::Small, Depth::Deep] {
        let mut p = pool(depth).0.lock().unwrap_or_else(|e| e.into_inner());
        while p.mapped < STACKS_AT_START {
            let s = SecretStack::map(depth, allow_unlocked)?;
            p.free.push(s);
            p.mapped += 1;
        }
    }
    Ok(())
}

/// A free stack: from the pool, newly mapped while locked memory allows, or
/// (when none can be mapped) the next one another thread gives back.
fn take_stack(depth: Depth) -> Option<SecretStack> {
    let (pool, returned) = pool(depth);
    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(s) = p.free.pop() {
            return Some(s);
        }
        match SecretStack::map(depth, degraded()) {
            Ok(s) => {
                p.mapped += 1;
                return Some(s);
            }
            Err(_) if p.mapped > 0 => {
                p = returned.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            Err(_) => return None,
        }
    }
}

/// The deepest use of a secret stack of each depth (tests only: a scan).
#[cfg(test)]
static MOST_USED: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

fn give_back(mut s: SecretStack) {
    #[cfg(test)]
    {
        let depth = s.depth;
        let region = s.region();
        let low = region.iter().position(|&b| b != 0).unwrap_or(region.len());
        MOST_USED[depth as usize].fetch_max(region.len() - low, Ordering::SeqCst);
    }
    s.wipe();
    let (pool, returned) = pool(s.depth);
    pool.lock().unwrap_or_else(|e| e.into_inner()).free.push(s);
    returned.notify_one();
}

/// Runs `f` on a small secret stack (hashes, MACs, ciphers); see
/// [`confined_at`].
pub fn confined<R>(f: impl FnOnce() -> R) -> R {
    confined_at(Depth::Small, f)
}

/// Runs `f` on a secret stack of at least `depth`, wiped afterwards: every
/// temporary copy of a key that `f` (or a library it calls) makes on the
/// stack stays in locked, non-dumpable memory and is gone when this returns.
/// A call made on a secret stack deep enough runs there; a deep call made on
/// a small one moves to a deep stack. A panic in `f` is carried across.
pub fn confined_at<R>(depth: Depth, f: impl FnOnce() -> R) -> R {
    let current = ON_SECRET_STACK.with(|c| c.get());
    if current.is_some_and(|d| d >= depth) {
        return f();
    }
    let Some(stack) = take_stack(depth) else {
        // Only before any configuration (no stack could ever be mapped):
        // C_Initialize maps the first stacks or fails closed.
        crate::log::error(
            "a secret computation ran on an ordinary stack: no locked stack could be mapped \
             (raise RLIMIT_MEMLOCK)",
        );
        return f();
    };
    ON_SECRET_STACK.with(|c| c.set(Some(depth)));
    let f = std::panic::AssertUnwindSafe(f);
    // SAFETY: the stack is page-aligned, its size a multiple of the page
    // size, owned by this call alone; the callback cannot unwind (caught).
    let result = unsafe {
        psm::on_stack(stack.data, depth.bytes(), move || {
            std::panic::catch_unwind(f)
        })
    };
    ON_SECRET_STACK.with(|c| c.set(current));
    give_back(stack);
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags and locked size of the mapping holding `addr`, from smaps.
    fn mapping_of(addr: usize) -> (usize, usize, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut current = None;
        let (mut locked_kb, mut size) = (0, 0);
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) = range {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
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

    #[test]
    fn secrets_share_one_locked_guarded_arena_excluded_from_dumps() {
        let a = Secret::<32>::copy_of(&[0x5a; 32]).unwrap();
        let b = Secret::<32>::copy_of(&[0xa5; 32]).unwrap();
        assert_eq!(*a, [0x5a; 32]);
        assert_eq!(*b, [0xa5; 32]);
        let (start, len) = region().unwrap();
        for s in [a.address(), b.address()] {
            assert!(
                (start..start + len).contains(&s),
                "{s:#x} outside the arena"
            );
        }
        let (size, locked_kb, flags) = mapping_of(a.address());
        assert_eq!(size, len, "the arena is one mapping");
        assert_eq!(locked_kb * 1024, len, "all of it locked");
        for flag in ["lo", "dd", "wf"] {
            assert!(
                flags.split_whitespace().any(|f| f == flag),
                "flag {flag} missing: {flags}"
            );
        }
        // The pages on either side are guards without any access.
        let (_, _, before) = mapping_of(start - 1);
        let (_, _, after) = mapping_of(start + len);
        for f in [before, after] {
            assert!(!f.contains("rd") && !f.contains("wr"), "guard flags: {f}");
        }
    }

    #[test]
    fn a_dropped_secret_is_wiped_and_its_chunk_reused() {
        let s = Secret::<32>::copy_of(&[0x77; 32]).unwrap();
        let at = s.address();
        drop(s);
        // SAFETY: the arena stays mapped; reading a freed chunk's bytes.
        let after = unsafe { std::slice::from_raw_parts(at as *const u8, 32) };
        assert_eq!(after, &[0u8; 32]);
        let big = SecretBytes::with_capacity(100).unwrap();
        assert_eq!(big.capacity(), 128, "whole chunks");
    }

    #[test]
    fn secret_bytes_grow_truncate_and_refuse_overflow() {
        let mut s = SecretBytes::with_capacity(40).unwrap();
        assert!(s.push(b"1234"));
        s.spare()[..2].copy_from_slice(b"56");
        s.grow(2);
        assert_eq!(&s[..], b"123456");
        s.truncate(3);
        assert_eq!(&s[..], b"123");
        assert_eq!(s.spare()[..3], [0, 0, 0], "the cut tail is wiped");
        assert!(!s.push(&[1; 62]));
        assert!(s.push(&[1; 61]));
    }

    /// Every computation on secrets fits its stack with room to spare, runs
    /// there (not on the caller's stack), and leaves it wiped.
    #[test]
    fn secret_computations_fit_their_stacks_and_leave_them_wiped() {
        use crate::derive::{public_point, KeyType};
        use crate::mechanisms::ecdsa_sign;
        use crate::symmetric::{gcm_seal, hmac, key_unwrap, key_wrap, GcmParams};
        let key = Secret::<32>::copy_of(&[3; 32]).unwrap();
        crate::mechanisms::warm_up();
        for kt in [KeyType::Secp256k1, KeyType::P256] {
            ecdsa_sign(kt, &key[..], &[1; 32]).unwrap();
            public_point(kt, &key).unwrap();
        }
        let p = GcmParams::new(vec![1; 60], None, vec![2; 40], 128).unwrap();
        gcm_seal(&key[..], &p, &[0; 1000]).unwrap();
        for m in [crate::ck::CKM_SHA256_HMAC, crate::ck::CKM_SHA512_HMAC] {
            hmac(m, &key[..], &[0; 1000]).unwrap();
        }
        let wrapped = key_wrap(&key[..], &[4; 40], true).unwrap();
        key_unwrap(&key[..], &wrapped, true).unwrap();
        crate::derive::key_from_prk(&key, KeyType::P256).unwrap();
        for depth in [Depth::Small, Depth::Deep] {
            let used = MOST_USED[depth as usize].load(Ordering::SeqCst);
            assert!(used > 0, "nothing ran on a {depth:?} stack");
            assert!(
                used < depth.bytes() / 2,
                "{depth:?}: {used} bytes of {} KiB",
                depth.kib()
            );
        }
        // The closure's frame lies in a locked, non-dumpable mapping of the
        // stack's size; a deep call from a small stack moves to a deep one.
        let (small, deep) = confined(|| {
            let here = std::hint::black_box([0x5au8; 64]);
            let deep = confined_at(Depth::Deep, || {
                let there = std::hint::black_box([0xa5u8; 64]);
                there.as_ptr() as usize
            });
            (here.as_ptr() as usize, deep)
        });
        for (frame, depth) in [(small, Depth::Small), (deep, Depth::Deep)] {
            let (size, locked_kb, flags) = mapping_of(frame);
            assert_eq!(
                size,
                depth.bytes(),
                "not on a {depth:?} secret stack: {flags}"
            );
            assert_eq!(locked_kb, depth.kib());
            assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
        }
        // Wiping (done when a stack goes back to the pool) leaves zeros; on
        // a private stack, so no other test's computation interferes.
        let mut own = SecretStack::map(Depth::Small, false).unwrap();
        own.region().fill(0x77);
        own.wipe();
        assert!(
            own.region().iter().all(|&b| b == 0),
            "the stack was not wiped"
        );
    }

    #[test]
    fn the_allocator_fits_runs_first_fit_and_wraps_round() {
        // A private arena of one page (128 chunks), not the shared one.
        let mut a = Arena::map(4, false).unwrap();
        let total = a.chunks();
        assert_eq!(a.take(total / 2), Some(0));
        assert_eq!(a.take(total / 2), Some(total / 2));
        assert_eq!(a.take(1), None, "full");
        a.mark(3, 2, false);
        assert_eq!(a.take(3), None, "two free chunks do not hold three");
        assert_eq!(a.take(2), Some(3), "found by wrapping round");
        a.mark(0, total, false);
        assert_eq!(a.in_use, 0);
        assert_eq!(a.take(total + 1), None);
        assert_eq!(a.take(total), Some(0));
    }
}
