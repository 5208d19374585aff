//! The arena: one locked, guarded, non-dumpable mapping per process, carved into 32-byte chunks that `Secret` and `SecretBytes` own and wipe.

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use zeroize::Zeroize;

use crate::process::{self, PerProcess};

use super::stack::{prepare_stacks, stack_pair_kib, stacks_at_start_kib};
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

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

pub(super) fn memlock_limit_kib() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    limit.rlim_cur / 1024
}

/// What RLIMIT_MEMLOCK must allow for an arena of `arena_len` bytes: the
/// arena and the secret stacks mapped at the start (the README's
/// "`locked_kib` + 256 KiB"), and how to raise it.
fn memlock_needed(arena_len: usize) -> String {
    let arena_kib = (arena_len / 1024) as u64;
    format!(
        "raise RLIMIT_MEMLOCK to at least {} KiB ({arena_kib} KiB for [memory] locked_kib plus \
         {} KiB for the secret stacks, and {} KiB more for each further thread that signs or \
         encrypts at the same moment; ulimit -l, LimitMEMLOCK= for a systemd service), or give \
         the process CAP_IPC_LOCK",
        arena_kib + stacks_at_start_kib(),
        stacks_at_start_kib(),
        stack_pair_kib()
    )
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
        // SAFETY: unmaps exactly the mapping just made, used by nothing yet.
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
                 {}, lower [memory] locked_kib, or set [memory] allow_unlocked = true to run \
                 degraded (secrets could then be swapped to disk)",
                memlock_limit_kib(),
                memlock_needed(len)
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
                 allow_unlocked is false: {} and restart",
                memlock_needed(want)
            ));
        }
        if a.in_use > 0 || (a.len == want && (a.locked || allow_unlocked)) {
            DEGRADED.store(!a.locked, Ordering::SeqCst);
            let locked = a.locked;
            drop(slot);
            prepare_stacks(allow_unlocked || !locked)
                .map_err(|e| format!("{e}: {}", memlock_needed(want)))?;
            return Ok(locked);
        }
    }
    *slot = None;
    let a = Arena::map(kib, allow_unlocked)?;
    let locked = a.locked;
    DEGRADED.store(!locked, Ordering::SeqCst);
    *slot = Some(a);
    drop(slot);
    prepare_stacks(allow_unlocked || !locked)
        .map_err(|e| format!("{e}: {}", memlock_needed(want)))?;
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
// SAFETY: shared access only reads the run's bytes; writes need `&mut`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::mapping_of;

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
