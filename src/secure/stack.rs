//! Secret stacks: locked, guarded, wiped stacks that every computation on a secret runs on (`confined`), so library temporaries of key bytes never reach an ordinary stack.

use std::ptr;
use std::sync::Mutex;

use crate::process::PerProcess;

use super::arena::{degraded, memlock_limit_kib, page_size};

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

/// The locked memory the secret stacks mapped at the start take, in KiB
/// (`STACKS_AT_START` of each depth: 256 KiB in a release build).
pub(super) const fn stacks_at_start_kib() -> u64 {
    STACKS_AT_START as u64 * stack_pair_kib()
}

/// One stack of each depth, in KiB: what a further thread computing on
/// secrets at the same moment may add (128 KiB in a release build).
pub(super) const fn stack_pair_kib() -> u64 {
    (Depth::Small.kib() + Depth::Deep.kib()) as u64
}

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
                     {} KiB)",
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
pub(super) fn prepare_stacks(allow_unlocked: bool) -> Result<(), String> {
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
        MOST_USED[depth as usize]
            .fetch_max(region.len() - low, std::sync::atomic::Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::{mapping_of, Secret};

    /// Every computation on secrets fits its stack with room to spare, runs
    /// there (not on the caller's stack), and leaves it wiped.
    #[test]
    fn secret_computations_fit_their_stacks_and_leave_them_wiped() {
        use crate::mechanisms::ecdsa_sign;
        use crate::mechanisms::gcm::{gcm_open, gcm_seal, GcmParams};
        use crate::mechanisms::hmac::hmac;
        use crate::mechanisms::keywrap::{key_unwrap, key_wrap};
        use crate::mechanisms::public_point;
        use crate::types::KeyType;
        let key = Secret::<32>::copy_of(&[3; 32]).unwrap();
        crate::mechanisms::warm_up();
        for kt in [KeyType::Secp256k1, KeyType::P256] {
            ecdsa_sign(kt, &key[..], &[1; 32]).unwrap();
            public_point(kt, &key).unwrap();
        }
        // Both GCM paths: aes-gcm (96-bit IV) and the composed one.
        for iv_len in [12, 60] {
            let p = GcmParams::new(vec![1; iv_len], None, vec![2; 40], 128).unwrap();
            let sealed = gcm_seal(&key[..], &p, &[0; 1000]).unwrap();
            gcm_open(&key[..], &p, &sealed).unwrap();
        }
        for m in [crate::ck::CKM_SHA256_HMAC, crate::ck::CKM_SHA512_HMAC] {
            hmac(m, &key[..], &[0; 1000]).unwrap();
        }
        for padded in [true, false] {
            let wrapped = key_wrap(&key[..], &[4; 40], padded).unwrap();
            key_unwrap(&key[..], &wrapped, padded).unwrap();
        }
        crate::derive::key_from_prk(&key, KeyType::P256).unwrap();
        // The chain mechanisms and HD children (design §6.1).
        crate::mechanisms::eddsa::ed25519_sign(&key[..], &[0; 100]).unwrap();
        crate::mechanisms::recoverable::recoverable_sign(&key[..], &[1; 32]).unwrap();
        crate::mechanisms::schnorr::schnorr_sign(&key[..], &[1; 32], &[2; 32]).unwrap();
        let path = crate::hd::Path::parse("m/44'/0'/0'/0/1").unwrap();
        for kt in [KeyType::Secp256k1, KeyType::P256] {
            crate::hd::derive_private(kt, &key[..], &[7; 32], &path).unwrap();
        }
        let hardened = crate::hd::Path::parse("m/44'/501'").unwrap();
        crate::hd::derive_private(KeyType::Ed25519, &key[..], &[7; 32], &hardened).unwrap();
        for depth in [Depth::Small, Depth::Deep] {
            let used = MOST_USED[depth as usize].load(std::sync::atomic::Ordering::SeqCst);
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
}
