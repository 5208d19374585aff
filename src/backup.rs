//! The root held in host memory for the two moments that need it there — the backup ceremony and a recovery — and the plan of a SLIP-39 share set.
//!
//! Everywhere else the root never leaves the backing HSM ([`crate::types::Prf`]).
//! A ceremony (`p11derive init --backup`) makes the root from the HSM's
//! random generator in locked memory, splits it into SLIP-39 shares and
//! imports it; a recovery (`p11derive root recover`) rebuilds it from
//! shares. In between, [`HeldRoot`] computes the scheme's PRF in locked
//! memory, so that the root's fingerprint (design §6.2), the audit key and
//! a users-mode login can be checked *before* the root is imported, and
//! the buffer is wiped when it is dropped.

#![forbid(unsafe_code)]

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ck::{CKR_ARGUMENTS_BAD, CKR_GENERAL_ERROR};
use crate::error::{Error, Result};
use crate::secure;
use crate::slip39::{Group, Plan, Share};
use crate::types::{Prf, Secret32};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A root in locked memory (wiped on drop), with the scheme's PRF.
pub struct HeldRoot(Secret32);

impl HeldRoot {
    /// Takes exactly 32 bytes (a SLIP-39 master secret of another length
    /// is not a p11derive root).
    pub fn from_bytes(bytes: &[u8]) -> Result<HeldRoot> {
        if bytes.len() != 32 {
            return Err(Error::with(
                CKR_ARGUMENTS_BAD,
                format!(
                    "the shares hold a {}-byte secret; a p11derive root is 32 bytes (256 bits): \
                     these are not a p11derive root's shares",
                    bytes.len()
                ),
            ));
        }
        let mut root = secure::secret::<32>()?;
        root.copy_from_slice(bytes);
        Ok(HeldRoot(root))
    }

    /// A new root from `random` (the backing HSM's generator).
    pub fn generate(random: &dyn Fn(&mut [u8]) -> Result<()>) -> Result<HeldRoot> {
        let mut root = secure::secret::<32>()?;
        random(&mut root[..])?;
        Ok(HeldRoot(root))
    }

    /// The root's bytes (to split, or to import).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The root fingerprint (design §6.2), computed here.
    pub fn fingerprint(&self) -> Result<[u8; 16]> {
        crate::derive::root_fingerprint(self)
    }
}

impl Prf for HeldRoot {
    fn prf(&self, input: &[u8]) -> Result<Secret32> {
        secure::confined(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..])
                .map_err(|_| Error::with(CKR_GENERAL_ERROR, "HMAC key"))?;
            m.update(input);
            let mut out = secure::secret::<32>()?;
            out.copy_from_slice(&m.finalize().into_bytes());
            Ok(out)
        })
    }
}

/// Reads `K-of-N` (a member threshold and count, 1 to 16).
pub fn parse_group(s: &str) -> std::result::Result<Group, String> {
    let bad = || {
        format!(
            "{s:?} is not K-of-N: write the shares needed and the shares made, e.g. 2-of-3 \
             (1 to 16 each, K at most N)"
        )
    };
    let (k, n) = s.trim().split_once("-of-").ok_or_else(bad)?;
    let k: u8 = k.trim().parse().map_err(|_| bad())?;
    let n: u8 = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n || n > 16 {
        return Err(bad());
    }
    Ok(Group {
        threshold: k,
        count: n,
    })
}

/// The plan of `init --backup K-of-N` (one group) or `--group … --groups-needed G`.
pub fn plan(
    backup: Option<&str>,
    groups: &[String],
    groups_needed: Option<u8>,
) -> std::result::Result<Plan, String> {
    let groups: Vec<Group> = match (backup, groups.is_empty()) {
        (Some(b), true) => vec![parse_group(b)?],
        (None, false) => groups
            .iter()
            .map(|g| parse_group(g))
            .collect::<std::result::Result<_, _>>()?,
        (Some(_), false) => {
            return Err(
                "give either --backup K-of-N (one group) or --group K-of-N for each \
                        group, not both"
                    .into(),
            )
        }
        (None, true) => return Err("no shares asked for: give --backup K-of-N".into()),
    };
    let needed = match (groups_needed, groups.len()) {
        (Some(g), _) => g,
        (None, 1) => 1,
        (None, n) => {
            return Err(format!(
                "{n} groups given: say how many of them a recovery needs with --groups-needed G \
                 (1 to {n})"
            ))
        }
    };
    let plan = Plan {
        groups_needed: needed,
        groups,
        iteration_exponent: 1,
        extendable: true,
    };
    plan.check()?;
    Ok(plan)
}

/// The file a share is written to: `share-g<G>-m<M>.txt` (1-based).
pub fn share_file_name(group: usize, member: usize) -> String {
    format!("share-g{}-m{}.txt", group + 1, member + 1)
}

/// Reads a fingerprint given as 32 hex digits.
pub fn parse_fingerprint(s: &str) -> std::result::Result<[u8; 16], String> {
    let t = s.trim();
    if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "fingerprint {s:?} is not 32 hex digits (the root fingerprint `p11derive init` and \
             `p11derive status` print)"
        ));
    }
    let mut fp = [0u8; 16];
    for (i, b) in fp.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(fp)
}

/// The longest share file read, in bytes (a 33-word share is under 300).
const SHARE_FILE_MAX: usize = 4096;

/// Writes each share to its own new file in `dir` (made 0700 when missing):
/// [`share_file_name`], mode 0600, never over an existing file, synced.
/// `header(group, member, share)` gives comment lines (`# …`) put before the
/// words. On any failure the files written so far are removed again, and the
/// error names the file.
pub fn write_share_files(
    dir: &Path,
    shares: &[Vec<Share>],
    header: &dyn Fn(usize, usize, &Share) -> String,
) -> std::result::Result<Vec<PathBuf>, String> {
    let access = crate::files::Access::Owner;
    crate::files::create_dirs(dir, &access)
        .map_err(|e| format!("cannot create the shares directory {}: {e}", dir.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for (g, members) in shares.iter().enumerate() {
            for (m, share) in members.iter().enumerate() {
                let path = dir.join(share_file_name(g, m));
                let file = crate::files::create_new(&path, &access).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        format!(
                            "{} exists: shares are never written over (each is given out once); \
                             use an empty --shares-dir",
                            path.display()
                        )
                    } else {
                        format!("cannot create share file {}: {e}", path.display())
                    }
                })?;
                written.push(path.clone());
                let words = share.mnemonic()?;
                let mut f = &file;
                f.write_all(header(g, m, share).as_bytes())
                    .and_then(|()| f.write_all(&words))
                    .and_then(|()| f.write_all(b"\n"))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot write share file {}: {e}", path.display()))?;
            }
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            remove_share_files(&written);
            Err(e)
        }
    }
}

/// Removes share files (a ceremony that could not finish: its shares are of
/// no root).
pub fn remove_share_files(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Reads one share from `path` into locked memory: its words, lines that
/// start with `#` being comments. Errors name the file.
pub fn read_share_file(path: &Path) -> std::result::Result<Share, String> {
    let shown = path.display();
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read share file {shown}: {e}"))?;
    let mut raw = secure::SecretBytes::with_capacity(SHARE_FILE_MAX + 1)?;
    loop {
        let n = file
            .read(raw.spare())
            .map_err(|e| format!("cannot read share file {shown}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.grow(n);
        if raw.len() > SHARE_FILE_MAX {
            return Err(format!(
                "share file {shown} is larger than {SHARE_FILE_MAX} bytes: it holds no single \
                 SLIP-39 share"
            ));
        }
    }
    share_from_text(&raw).map_err(|e| format!("share file {shown}: {e}"))
}

/// A share from text (a file's, or typed): `#` lines skipped, the rest its words.
pub fn share_from_text(text: &[u8]) -> std::result::Result<Share, String> {
    let mut words = secure::SecretBytes::with_capacity(text.len().max(1))?;
    for line in text.split(|b| *b == b'\n') {
        let t = line.trim_ascii();
        if t.is_empty() || t.starts_with(b"#") {
            continue;
        }
        words.push(t);
        words.push(b" ");
    }
    if words.is_empty() {
        return Err("no words: a share is 20 or more SLIP-39 words".into());
    }
    Share::from_mnemonic(&words).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_root_computes_the_vector_fingerprint_as_the_hsm_would() {
        // The PRF is HMAC-SHA256 keyed with the root (design §2).
        let root: Vec<u8> = (0u8..32).collect();
        let held = HeldRoot::from_bytes(&root).unwrap();
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&root).unwrap();
        m.update(b"p11derive-v1\x02root fingerprint");
        let want = m.finalize().into_bytes();
        assert_eq!(held.fingerprint().unwrap(), want[..16]);
        assert!(HeldRoot::from_bytes(&root[..16]).is_err());
    }

    #[test]
    fn plans_from_the_command_line() {
        let p = plan(Some("2-of-3"), &[], None).unwrap();
        assert_eq!((p.groups_needed, p.groups.len()), (1, 1));
        let g = ["2-of-3".to_string(), "3-of-5".to_string()];
        let p = plan(None, &g, Some(2)).unwrap();
        assert_eq!(p.groups[1].count, 5);
        assert!(plan(None, &g, None)
            .unwrap_err()
            .contains("--groups-needed"));
        assert!(plan(Some("2-of-3"), &g, None).is_err());
        assert!(plan(None, &g, Some(3)).is_err());
        for bad in ["3-of-2", "0-of-3", "2-of-17", "2 of 3", "x-of-3"] {
            assert!(parse_group(bad).is_err(), "{bad}");
        }
        assert!(parse_fingerprint("00112233445566778899aabbccddeeff").is_ok());
        assert!(parse_fingerprint("0011").is_err());
    }
}
