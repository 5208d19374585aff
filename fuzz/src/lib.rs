//! Helpers shared by the fuzz targets: a reader that turns fuzz input into
//! values (never failing: an exhausted input reads as zeros), a software PRF
//! for building realistic stores without an HSM, a certificate-shaped value,
//! and a scratch directory on tmpfs so the store's fsyncs stay cheap.

use std::path::{Path, PathBuf};

use p11derive::ck::CKM_SHA256_HMAC;
use p11derive::derive::{Prf, Secret32};

/// Reads fuzz input front to back. Past the end every read gives zeros and
/// [`Reader::done`] turns true, so a program simply stops there.
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    exhausted: bool,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            at: 0,
            exhausted: false,
        }
    }

    pub fn done(&self) -> bool {
        self.exhausted || self.at >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.get(self.at) {
            Some(&b) => {
                self.at += 1;
                b
            }
            None => {
                self.exhausted = true;
                0
            }
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let end = self.at.saturating_add(n).min(self.data.len());
        if end - self.at < n {
            self.exhausted = true;
        }
        let out = &self.data[self.at..end];
        self.at = end;
        out
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn blob(&mut self, max: usize) -> &'a [u8] {
        let n = self.u8() as usize % (max + 1);
        self.bytes(n)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.at..];
        self.at = self.data.len();
        out
    }

    /// One of `items`, chosen by the next byte.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.u8() as usize % items.len()]
    }
}

/// HMAC-SHA256 under a fixed fuzzing root: stands in for the HSM's PRF when
/// a target builds stores itself (only the scheme's shape matters here).
pub struct SoftPrf(pub [u8; 32]);

impl Prf for SoftPrf {
    fn prf(&self, input: &[u8]) -> p11derive::Result<Secret32> {
        let mac = p11derive::mechanisms::hmac::hmac(CKM_SHA256_HMAC, &self.0, input)?;
        let mut out = p11derive::secure::secret::<32>()?;
        out.copy_from_slice(&mac);
        Ok(out)
    }
}

/// One DER element (definite length, short or two-byte long form).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        out.push(0x82);
        out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

/// The shape of an X.509 certificate (97 bytes, signed by nobody): enough for
/// `objects::x509_fields` and the provider's DER walk.
pub fn certificate() -> Vec<u8> {
    let name = der(
        0x30,
        &der(0x31, &der(0x30, b"\x06\x03\x55\x04\x03\x0c\x04fuzz")),
    );
    let alg = der(0x30, b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02");
    let spki = der(
        0x30,
        &[der(0x30, b"\x06\x01\x00"), der(0x03, &[0; 5])].concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1]),
            alg.clone(),
            name.clone(),
            der(0x30, b""),
            name,
            spki,
        ]
        .concat(),
    );
    der(0x30, &[tbs, alg, der(0x03, &[0; 9])].concat())
}

/// A fresh directory for this process's scratch files, named after the
/// process so runs never share one: under `$P11DERIVE_FUZZ_SCRATCH` when set
/// (tools/fuzz.sh sets it and removes it afterwards), else on tmpfs
/// (`/dev/shm`) when there is one, because the store fsyncs every commit.
pub fn scratch_dir(what: &str) -> PathBuf {
    let base = match std::env::var_os("P11DERIVE_FUZZ_SCRATCH") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("p11derive-fuzz-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Removes a SQLite file and its WAL companions.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}
