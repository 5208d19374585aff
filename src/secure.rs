//! Locked memory for secrets (design §4 "Memory").
//!
//! A [`LockedKey`] lives alone on a page mapped for it: the page is locked
//! into RAM (`mlock`, never swapped), excluded from core dumps
//! (`MADV_DONTDUMP`), and fenced by inaccessible guard pages; it is wiped
//! and unmapped on drop. It holds the audit key and each cached derived key;
//! packing many secrets into one arena is still to come (issue 5).

use std::ptr;

use crate::derive::Secret32;

/// Set when the operator allowed running without locked memory and locking
/// failed: pages are then used unlocked (still guarded and non-dumpable).
static UNLOCKED_ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Checks at start that `kib` of memory can be locked, by locking (and
/// releasing) that much. Without it: an error naming the limit and the fix,
/// or, when `allow_unlocked`, degraded mode (the caller warns loudly).
pub fn probe(kib: u64, allow_unlocked: bool) -> Result<bool, String> {
    let len = (kib as usize).max(4) * 1024;
    // SAFETY: an anonymous private mapping, unmapped below.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!("cannot map {kib} KiB for secrets"));
    }
    // SAFETY: locking and unmapping the region just mapped.
    let locked = unsafe {
        let ok = libc::mlock(base as *const _, len) == 0;
        let err = std::io::Error::last_os_error();
        if ok {
            libc::munlock(base as *const _, len);
        }
        libc::munmap(base, len);
        ok.then_some(()).ok_or(err)
    };
    match locked {
        Ok(()) => {
            UNLOCKED_ALLOWED.store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(true)
        }
        Err(_) if allow_unlocked => {
            UNLOCKED_ALLOWED.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(false)
        }
        Err(e) => {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into `limit`.
            unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
            Err(format!(
                "cannot lock {kib} KiB of memory for secrets ({e}; RLIMIT_MEMLOCK is {} KiB): \
                 raise RLIMIT_MEMLOCK to at least {kib} KiB (ulimit -l, LimitMEMLOCK= for a systemd \
                 service), lower [memory] locked_kib, or set [memory] allow_unlocked = true to run \
                 degraded (secrets could then be swapped to disk)",
                limit.rlim_cur / 1024
            ))
        }
    }
}

pub struct LockedKey {
    /// The first of three pages: guard, secret, guard.
    base: *mut libc::c_void,
    page: usize,
}

// SAFETY: the page is owned by this value alone and only read through &self.
unsafe impl Send for LockedKey {}
unsafe impl Sync for LockedKey {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl LockedKey {
    /// Copies `key` into a locked, non-dumpable page. The caller keeps (and
    /// wipes, on drop) its own copy: taking the key by value would move it,
    /// leaving its bytes in the caller's stack frame unwiped. Fails when the
    /// page cannot be locked: the message names the limit.
    pub fn new(key: &Secret32) -> Result<LockedKey, String> {
        let page = page_size();
        // SAFETY: an anonymous private mapping of three pages; checked below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err("cannot map a page for secrets (mmap failed)".into());
        }
        let locked = LockedKey { base, page };
        let data = locked.data();
        // SAFETY: all three pages belong to this fresh mapping.
        unsafe {
            if libc::mprotect(base, page, libc::PROT_NONE) != 0
                || libc::mprotect(data.add(page) as *mut _, page, libc::PROT_NONE) != 0
            {
                return Err("cannot set guard pages around secrets (mprotect failed)".into());
            }
            if libc::mlock(data as *const _, page) != 0
                && !UNLOCKED_ALLOWED.load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(format!(
                    "cannot lock a page of memory for secrets ({}); raise RLIMIT_MEMLOCK \
                     (ulimit -l, or LimitMEMLOCK= for a systemd service) by at least {} KiB",
                    std::io::Error::last_os_error(),
                    page / 1024
                ));
            }
            if libc::madvise(data as *mut _, page, libc::MADV_DONTDUMP) != 0 {
                return Err("cannot exclude secrets from core dumps (madvise failed)".into());
            }
            // The page is zeroed (fresh anonymous memory): a valid Secret32 of
            // zeros, filled in place.
            let slot = &mut *(data as *mut Secret32);
            slot.copy_from_slice(&key[..]);
        }
        Ok(locked)
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the secret page is the second of the three mapped pages.
        unsafe { (self.base as *mut u8).add(self.page) }
    }

    /// The key, read in place.
    pub fn get(&self) -> &Secret32 {
        // SAFETY: `new` wrote a Secret32 at the start of the data page, which
        // stays mapped, readable and unchanged until drop.
        unsafe { &*(self.data() as *const Secret32) }
    }

    /// Where the secret lives, for tests that inspect the mapping.
    pub fn address(&self) -> usize {
        self.data() as usize
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        // SAFETY: the data page holds the Secret32 written by `new` (if `new`
        // got that far; otherwise it is zeroed memory, and dropping a zeroed
        // Zeroizing<[u8; 32]> only writes zeros). Unmapping the region we own.
        unsafe {
            ptr::drop_in_place(self.data() as *mut Secret32);
            libc::munlock(self.data() as *const _, self.page);
            libc::munmap(self.base, 3 * self.page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn the_key_page_is_locked_and_excluded_from_dumps() {
        let k = LockedKey::new(&Zeroizing::new([0x5a; 32])).unwrap();
        assert_eq!(k.get()[..], [0x5a; 32]);
        let addr = k.address();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        let (mut locked_kb, mut flags) = (None, None);
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        in_region = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if in_region {
                if let Some(v) = line.strip_prefix("Locked:") {
                    locked_kb = v.trim().trim_end_matches(" kB").parse::<usize>().ok();
                }
                if let Some(v) = line.strip_prefix("VmFlags:") {
                    flags = Some(v.to_string());
                }
            }
        }
        assert!(
            locked_kb.unwrap_or(0) >= page_size() / 1024,
            "not locked: {locked_kb:?}"
        );
        let flags = flags.expect("VmFlags of the key's page");
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "not excluded from dumps: {flags}"
        );
        assert!(
            flags.split_whitespace().any(|f| f == "lo"),
            "not locked: {flags}"
        );
    }
}
