//! AES-ECB, AES-CBC, AES-CBC with PKCS#7 padding and AES-CTR (NIST SP 800-38A), and AES-CMAC (SP 800-38B), by the RustCrypto crates `ecb`, `cbc`, `ctr` and `cmac`.
//!
//! Encryption and decryption stream: [`Stream`] keeps, between the parts a
//! caller gives, only what PKCS#11 needs — the chaining value (the last
//! ciphertext block, CBC) or the number of bytes processed (CTR), both
//! public, and the bytes of a part that do not fill a block yet (possibly
//! plaintext) in the locked arena. No key schedule outlives a call: each
//! part builds its cipher from the key bytes on a secret stack
//! (`secure::confined`, as `gcm.rs` does), which is wiped when it returns.
//!
//! CTR (`CK_AES_CTR_PARAMS`): the low `ulCounterBits` bits of the counter
//! block count blocks; PKCS#11 lets no counter wrap within an operation, so
//! data that would need more blocks than remain before the counter wraps
//! is refused before anything is processed (`CKR_DATA_LEN_RANGE`, or
//! `CKR_ENCRYPTED_DATA_LEN_RANGE` when decrypting). Within that range the
//! full 128-bit big-endian increment of `ctr::Ctr128BE` never carries out
//! of the counter bits, so it is the PKCS#11 counter.
//!
//! Derived assets use these modes under subkeys of their key `K`
//! ([`subkey`]): HKDF-SHA256 with `K` as input keying material and
//! [`BLOCK_MODES_INFO`] or [`CMAC_INFO`] as info, as long as `K`. An
//! encryption oracle under `K` itself (ECB, or CTR, whose decryption is its
//! encryption) would reveal GCM's hash key `E(K, 0^128)` and let a holder of
//! decrypt rights forge GCM ciphertexts; separate subkeys keep GCM, the
//! block modes and CMAC apart, as key wrap already is (its subkey `W`).
//! Session keys are used as given (their value is the caller's).

#![forbid(unsafe_code)]

use aes::cipher::array::Array;
use aes::cipher::block_padding::{Padding, Pkcs7};
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, BlockSizeUser,
    KeyInit, KeyIvInit, StreamCipher, StreamCipherSeek,
};
use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, Mac};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure::SecretBytes;

/// Calls `$f::<Aes>` for the AES of the key's length.
macro_rules! by_key {
    ($f:ident, $key:expr, ($($arg:expr),*)) => {
        match $key.len() {
            16 => $f::<Aes128>($($arg),*),
            24 => $f::<Aes192>($($arg),*),
            32 => $f::<Aes256>($($arg),*),
            n => Err(Error::with(
                CKR_KEY_SIZE_RANGE,
                format!("an AES key of {n} bytes; AES keys are 16, 24 or 32 bytes"),
            )),
        }
    };
}

/// The AES block size.
pub const BLOCK: usize = 16;

/// The info of a derived asset's ECB/CBC/CTR subkey.
pub const BLOCK_MODES_INFO: &[u8] = b"p11derive-v1 aes block modes";
/// The info of a derived asset's CMAC subkey.
pub const CMAC_INFO: &[u8] = b"p11derive-v1 aes cmac";

/// A confidentiality mode of SP 800-38A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ecb,
    Cbc,
    /// CBC with PKCS#7 padding (`CKM_AES_CBC_PAD`).
    CbcPad,
    Ctr,
}

impl Mode {
    /// The mode of a PKCS#11 mechanism, if it is one of these.
    pub fn of(mech: CK_MECHANISM_TYPE) -> Option<Mode> {
        Some(match mech {
            CKM_AES_ECB => Mode::Ecb,
            CKM_AES_CBC => Mode::Cbc,
            CKM_AES_CBC_PAD => Mode::CbcPad,
            CKM_AES_CTR => Mode::Ctr,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Ecb => "CKM_AES_ECB",
            Mode::Cbc => "CKM_AES_CBC",
            Mode::CbcPad => "CKM_AES_CBC_PAD",
            Mode::Ctr => "CKM_AES_CTR",
        }
    }
}

/// A mode with its parameter: the IV (CBC), or the counter block and its
/// counter width (CTR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeParams {
    pub mode: Mode,
    /// The IV or the initial counter block (zero for ECB).
    pub iv: [u8; BLOCK],
    /// CTR: `ulCounterBits`, 1 to 128.
    pub counter_bits: u32,
}

impl ModeParams {
    /// Reads the caller's mechanism parameter: none for ECB, a 16-byte IV
    /// for CBC, a `CK_AES_CTR_PARAMS` for CTR; anything else is
    /// `CKR_MECHANISM_PARAM_INVALID`, naming what was expected.
    pub fn parse(mech: CK_MECHANISM_TYPE, param: &[u8]) -> Result<ModeParams> {
        let mode = Mode::of(mech).ok_or(Error::rv(CKR_MECHANISM_INVALID))?;
        let bad = |why: String| {
            Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!("{}: {why}", mode.name()),
            )
        };
        let mut p = ModeParams {
            mode,
            iv: [0; BLOCK],
            counter_bits: 0,
        };
        match mode {
            Mode::Ecb if param.is_empty() => {}
            Mode::Ecb => {
                return Err(bad(format!(
                    "takes no parameter, {} bytes were given",
                    param.len()
                )))
            }
            Mode::Cbc | Mode::CbcPad => {
                p.iv = param.try_into().map_err(|_| {
                    bad(format!(
                        "the IV has {} bytes; it must be one 16-byte block",
                        param.len()
                    ))
                })?;
            }
            Mode::Ctr => {
                let n = size_of::<CK_ULONG>();
                if param.len() != n + BLOCK {
                    return Err(bad(format!(
                        "ulParameterLen {} is not the size of CK_AES_CTR_PARAMS ({})",
                        param.len(),
                        n + BLOCK
                    )));
                }
                let mut bits = [0u8; size_of::<CK_ULONG>()];
                bits.copy_from_slice(&param[..n]);
                let bits = CK_ULONG::from_ne_bytes(bits);
                if !(1..=128).contains(&bits) {
                    return Err(bad(format!(
                        "ulCounterBits {bits}; the counter is 1 to 128 bits of the block"
                    )));
                }
                p.counter_bits = bits as u32;
                p.iv.copy_from_slice(&param[n..]);
            }
        }
        Ok(p)
    }

    /// CTR: the number of blocks the counter allows before it would wrap
    /// (`None`: more than any data can need).
    fn ctr_blocks(&self) -> Option<u128> {
        let mask = if self.counter_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << self.counter_bits) - 1
        };
        let start = u128::from_be_bytes(self.iv) & mask;
        (mask - start).checked_add(1)
    }
}

/// An encryption or decryption in progress in one of the [`Mode`]s.
pub struct Stream {
    params: ModeParams,
    encrypting: bool,
    /// CTR: the bytes processed so far.
    done: u128,
    /// Bytes given but not processed yet: less than a block, or (CBC-PAD
    /// decryption) up to one block held back until the end, since the last
    /// block carries the padding.
    pending: SecretBytes,
}

/// The arena run that holds a stream's pending bytes.
const PENDING: usize = 2 * BLOCK;

fn no_memory(m: String) -> Error {
    Error::with(CKR_HOST_MEMORY, m)
}

impl Stream {
    pub fn new(params: ModeParams, encrypting: bool) -> Result<Stream> {
        Ok(Stream {
            params,
            encrypting,
            done: 0,
            pending: SecretBytes::with_capacity(PENDING).map_err(no_memory)?,
        })
    }

    /// A copy, to answer a length query by computing without releasing.
    pub fn try_clone(&self) -> Result<Stream> {
        let mut pending = SecretBytes::with_capacity(PENDING).map_err(no_memory)?;
        pending.push(&self.pending);
        Ok(Stream {
            params: self.params.clone(),
            encrypting: self.encrypting,
            done: self.done,
            pending,
        })
    }

    pub fn mode(&self) -> Mode {
        self.params.mode
    }

    /// The IV or initial counter block, for the audit record.
    pub fn iv(&self) -> Option<&[u8; BLOCK]> {
        (self.params.mode != Mode::Ecb).then_some(&self.params.iv)
    }

    fn len_range(&self) -> CK_RV {
        if self.encrypting {
            CKR_DATA_LEN_RANGE
        } else {
            CKR_ENCRYPTED_DATA_LEN_RANGE
        }
    }

    /// Processes a part: returns the output it completes (whole blocks;
    /// CTR: as many bytes as given).
    pub fn update(&mut self, key: &[u8], input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if self.params.mode == Mode::Ctr {
            return self.ctr(key, input);
        }
        let mut work = Zeroizing::new(Vec::with_capacity(self.pending.len() + input.len()));
        work.extend_from_slice(&self.pending);
        work.extend_from_slice(input);
        let total = work.len();
        let n = if self.params.mode == Mode::CbcPad && !self.encrypting {
            // The last whole block may be the padded one: keep it.
            total.saturating_sub(1) / BLOCK * BLOCK
        } else {
            total / BLOCK * BLOCK
        };
        self.pending.truncate(0);
        if !self.pending.push(&work[n..]) {
            return Err(Error::with(
                CKR_GENERAL_ERROR,
                "AES block mode: pending bytes overflow",
            ));
        }
        work.truncate(n);
        self.blocks(key, &mut work)?;
        Ok(work)
    }

    /// Ends the operation: the last output (CBC-PAD: the padded block, or
    /// the unpadded end of the plaintext). ECB and CBC refuse a partial
    /// block left over (`CKR_DATA_LEN_RANGE` / `CKR_ENCRYPTED_DATA_LEN_RANGE`),
    /// CBC-PAD a bad padding (`CKR_ENCRYPTED_DATA_INVALID`).
    pub fn finish(&mut self, key: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mode = self.params.mode;
        let left = self.pending.len();
        match (mode, self.encrypting) {
            (Mode::Ctr, _) => Ok(Zeroizing::new(Vec::new())),
            (Mode::Ecb | Mode::Cbc, _) if left == 0 => Ok(Zeroizing::new(Vec::new())),
            (Mode::Ecb | Mode::Cbc, _) => Err(Error::with(
                self.len_range(),
                format!(
                    "{}: the data is not a whole number of 16-byte blocks ({left} bytes over); \
                     pad it, or use CKM_AES_CBC_PAD",
                    mode.name()
                ),
            )),
            (Mode::CbcPad, true) => {
                let mut block = Zeroizing::new(vec![0u8; BLOCK]);
                block[..left].copy_from_slice(&self.pending);
                Pkcs7::raw_pad(&mut block, left);
                self.pending.truncate(0);
                self.blocks(key, &mut block)?;
                Ok(block)
            }
            (Mode::CbcPad, false) => {
                if left != BLOCK {
                    return Err(Error::with(
                        CKR_ENCRYPTED_DATA_LEN_RANGE,
                        format!(
                            "CKM_AES_CBC_PAD: the ciphertext is not a positive whole number of \
                             16-byte blocks ({left} bytes in the last block)"
                        ),
                    ));
                }
                let mut block = Zeroizing::new(self.pending.to_vec());
                self.pending.truncate(0);
                self.blocks(key, &mut block)?;
                let len = Pkcs7::raw_unpad(&block)
                    .map_err(|_| {
                        Error::with(
                            CKR_ENCRYPTED_DATA_INVALID,
                            "CKM_AES_CBC_PAD: the padding of the last block is invalid (wrong \
                             key or IV, or damaged data)",
                        )
                    })?
                    .len();
                block.truncate(len);
                Ok(block)
            }
        }
    }

    /// ECB or CBC over whole blocks, in place; CBC carries its chaining
    /// value to the next part.
    fn blocks(&mut self, key: &[u8], data: &mut [u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (mode, encrypting) = (self.params.mode, self.encrypting);
        // The next chaining value is the last ciphertext block: the input's
        // when decrypting (read before it is overwritten).
        let last_in: [u8; BLOCK] = data[data.len() - BLOCK..].try_into().unwrap_or_default();
        let iv = self.params.iv;
        crate::secure::confined(|| by_key!(run_blocks, key, (key, mode, encrypting, &iv, data)))?;
        if mode != Mode::Ecb {
            self.params.iv = if encrypting {
                data[data.len() - BLOCK..].try_into().unwrap_or_default()
            } else {
                last_in
            };
        }
        Ok(())
    }

    /// CTR over any number of bytes, after checking the counter range.
    fn ctr(&mut self, key: &[u8], input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let end = self.done + input.len() as u128;
        let blocks = end.div_ceil(BLOCK as u128);
        if let Some(max) = self.params.ctr_blocks() {
            if blocks > max {
                return Err(Error::with(
                    self.len_range(),
                    format!(
                        "CKM_AES_CTR: {end} bytes need {blocks} counter blocks, but a \
                         {}-bit counter starting at this counter block allows {max} before it \
                         wraps (PKCS#11 forbids the wrap): give fewer bytes, a wider \
                         ulCounterBits or a lower initial counter",
                        self.params.counter_bits
                    ),
                ));
            }
        }
        let mut out = Zeroizing::new(input.to_vec());
        let (iv, done) = (self.params.iv, self.done);
        crate::secure::confined(|| by_key!(run_ctr, key, (key, &iv, done, &mut out)))?;
        self.done = end;
        Ok(out)
    }
}

fn key_size() -> Error {
    Error::rv(CKR_KEY_SIZE_RANGE)
}

fn run_blocks<A>(
    key: &[u8],
    mode: Mode,
    encrypting: bool,
    iv: &[u8; BLOCK],
    data: &mut [u8],
) -> Result<()>
where
    A: KeyInit + BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let (blocks, rest) = Array::<u8, U16>::slice_as_chunks_mut(data);
    if !rest.is_empty() {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            "AES block mode: a partial block",
        ));
    }
    match (mode, encrypting) {
        (Mode::Ecb, true) => ecb::Encryptor::<A>::new_from_slice(key)
            .map_err(|_| key_size())?
            .encrypt_blocks(blocks),
        (Mode::Ecb, false) => ecb::Decryptor::<A>::new_from_slice(key)
            .map_err(|_| key_size())?
            .decrypt_blocks(blocks),
        (_, true) => cbc::Encryptor::<A>::new_from_slices(key, iv)
            .map_err(|_| key_size())?
            .encrypt_blocks(blocks),
        (_, false) => cbc::Decryptor::<A>::new_from_slices(key, iv)
            .map_err(|_| key_size())?
            .decrypt_blocks(blocks),
    }
    Ok(())
}

fn run_ctr<A>(key: &[u8], iv: &[u8; BLOCK], done: u128, data: &mut [u8]) -> Result<()>
where
    A: KeyInit + BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
    ctr::Ctr128BE<A>: KeyIvInit + StreamCipher + StreamCipherSeek,
{
    let mut c = ctr::Ctr128BE::<A>::new_from_slices(key, iv).map_err(|_| key_size())?;
    c.try_seek(done)
        .map_err(|_| Error::rv(CKR_DATA_LEN_RANGE))?;
    c.try_apply_keystream(data)
        .map_err(|_| Error::rv(CKR_DATA_LEN_RANGE))
}

/// The AES-CMAC of `msg` (SP 800-38B), its first `len` bytes (1 to 16).
pub fn cmac(key: &[u8], msg: &[u8], len: usize) -> Result<Vec<u8>> {
    fn run<A>(key: &[u8], msg: &[u8], len: usize) -> Result<Vec<u8>>
    where
        A: KeyInit + BlockCipherEncrypt + BlockSizeUser<BlockSize = U16> + Clone,
        Cmac<A>: KeyInit + Mac,
    {
        let mut m = <Cmac<A> as KeyInit>::new_from_slice(key).map_err(|_| key_size())?;
        m.update(msg);
        let tag = m.finalize().into_bytes();
        Ok(tag[..len.min(BLOCK)].to_vec())
    }
    crate::secure::confined(|| by_key!(run, key, (key, msg, len)))
}

/// Checks an AES-CMAC of `len` bytes in constant time:
/// `CKR_SIGNATURE_LEN_RANGE` for a signature of another length,
/// `CKR_SIGNATURE_INVALID` for a wrong one.
pub fn cmac_verify(key: &[u8], msg: &[u8], len: usize, sig: &[u8]) -> Result<()> {
    if sig.len() != len {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    let want = cmac(key, msg, len)?;
    if bool::from(want.ct_eq(sig)) {
        Ok(())
    } else {
        Err(Error::rv(CKR_SIGNATURE_INVALID))
    }
}

/// The MAC length of `CKM_AES_CMAC` (16, no parameter) or
/// `CKM_AES_CMAC_GENERAL` (`CK_MAC_GENERAL_PARAMS`, 1 to 16).
pub fn cmac_len(mech: CK_MECHANISM_TYPE, param: &[u8]) -> Result<usize> {
    let bad = |why: String| Error::with(CKR_MECHANISM_PARAM_INVALID, why);
    match mech {
        CKM_AES_CMAC if param.is_empty() => Ok(BLOCK),
        CKM_AES_CMAC => Err(bad(format!(
            "CKM_AES_CMAC takes no parameter ({} bytes given); for a shorter MAC use \
             CKM_AES_CMAC_GENERAL",
            param.len()
        ))),
        CKM_AES_CMAC_GENERAL => {
            let n: [u8; size_of::<CK_ULONG>()] = param.try_into().map_err(|_| {
                bad(format!(
                    "CKM_AES_CMAC_GENERAL: ulParameterLen {} is not the size of \
                     CK_MAC_GENERAL_PARAMS ({})",
                    param.len(),
                    size_of::<CK_ULONG>()
                ))
            })?;
            let len = CK_ULONG::from_ne_bytes(n);
            if !(1..=BLOCK as CK_ULONG).contains(&len) {
                return Err(bad(format!(
                    "CKM_AES_CMAC_GENERAL: a MAC of {len} bytes; AES-CMAC gives 1 to 16"
                )));
            }
            Ok(len as usize)
        }
        _ => Err(Error::rv(CKR_MECHANISM_INVALID)),
    }
}

/// A derived asset's subkey for the block modes or CMAC (`info`):
/// HKDF-SHA256 of its key `K`, as long as `K`, into the locked arena (the
/// HMAC states on a secret stack).
pub fn subkey(key: &[u8], info: &[u8]) -> Result<SecretBytes> {
    let mut out = SecretBytes::with_capacity(key.len().max(1)).map_err(no_memory)?;
    crate::secure::confined(|| {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, key);
        hk.expand(info, &mut out.spare()[..key.len()])
            .map_err(|_| Error::with(CKR_GENERAL_ERROR, "HKDF-Expand: output length"))
    })?;
    out.grow(key.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::unhex;

    const KEY128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const KEY192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
    const KEY256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                         30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    fn params(mech: CK_MECHANISM_TYPE, param: &[u8]) -> ModeParams {
        ModeParams::parse(mech, param).unwrap()
    }

    fn ctr_param(bits: CK_ULONG, cb: &[u8]) -> Vec<u8> {
        [&bits.to_ne_bytes()[..], cb].concat()
    }

    /// Encrypts and decrypts in one part and in parts of every size from 1
    /// to 17 bytes, checking the ciphertext against `want`.
    fn check(key: &str, p: ModeParams, plain: &[u8], want: &[u8]) {
        let key = unhex(key);
        let mut s = Stream::new(p.clone(), true).unwrap();
        let mut ct = s.update(&key, plain).unwrap().to_vec();
        ct.extend_from_slice(&s.finish(&key).unwrap());
        assert_eq!(ct, want, "{:?} one part", p.mode);
        for part in 1..=17 {
            for (encrypting, input, output) in [(true, plain, want), (false, want, plain)] {
                let mut s = Stream::new(p.clone(), encrypting).unwrap();
                let mut out = Vec::new();
                for chunk in input.chunks(part) {
                    let len = s.try_clone().unwrap().update(&key, chunk).unwrap().len();
                    let got = s.update(&key, chunk).unwrap();
                    assert_eq!(got.len(), len);
                    out.extend_from_slice(&got);
                }
                out.extend_from_slice(&s.finish(&key).unwrap());
                assert_eq!(
                    out, output,
                    "{:?} parts of {part}, encrypting {encrypting}",
                    p.mode
                );
            }
        }
    }

    /// SP 800-38A F.1 (ECB-AES128/192/256).
    #[test]
    fn ecb_matches_sp800_38a() {
        let plain = unhex(PLAIN);
        for (key, ct) in [
            (
                KEY128,
                "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf\
                 43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4",
            ),
            (
                KEY192,
                "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eef\
                 ef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e",
            ),
            (
                KEY256,
                "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870\
                 b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7",
            ),
        ] {
            check(key, params(CKM_AES_ECB, &[]), &plain, &unhex(ct));
        }
    }

    /// SP 800-38A F.2 (CBC-AES128/192/256).
    #[test]
    fn cbc_matches_sp800_38a() {
        let plain = unhex(PLAIN);
        let iv = unhex("000102030405060708090a0b0c0d0e0f");
        for (key, ct) in [
            (
                KEY128,
                "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2\
                 73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7",
            ),
            (
                KEY192,
                "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a\
                 571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd",
            ),
            (
                KEY256,
                "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d\
                 39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
            ),
        ] {
            check(key, params(CKM_AES_CBC, &iv), &plain, &unhex(ct));
            // CBC-PAD of whole blocks: the same blocks, then one of padding.
            let padded = params(CKM_AES_CBC_PAD, &iv);
            let mut s = Stream::new(padded.clone(), true).unwrap();
            let k = unhex(key);
            let mut out = s.update(&k, &plain).unwrap().to_vec();
            out.extend_from_slice(&s.finish(&k).unwrap());
            assert_eq!(out.len(), plain.len() + 16);
            assert_eq!(&out[..plain.len()], &unhex(ct)[..]);
            check(key, padded, &plain, &out);
        }
    }

    /// SP 800-38A F.5 (CTR-AES128/192/256).
    #[test]
    fn ctr_matches_sp800_38a() {
        let plain = unhex(PLAIN);
        let cb = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        for (key, ct) in [
            (
                KEY128,
                "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
                 5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
            ),
            (
                KEY192,
                "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94\
                 1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050",
            ),
            (
                KEY256,
                "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
                 2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
            ),
        ] {
            check(
                key,
                params(CKM_AES_CTR, &ctr_param(128, &cb)),
                &plain,
                &unhex(ct),
            );
            // The same with an odd length: CTR needs no whole blocks.
            let ct = unhex(ct);
            check(
                key,
                params(CKM_AES_CTR, &ctr_param(32, &cb)),
                &plain[..37],
                &ct[..37],
            );
        }
    }

    #[test]
    fn the_ctr_counter_never_wraps() {
        let key = unhex(KEY128);
        // An 8-bit counter at 0xfe: two blocks remain.
        let mut cb = [0u8; 16];
        cb[15] = 0xfe;
        let p = params(CKM_AES_CTR, &ctr_param(8, &cb));
        let mut s = Stream::new(p.clone(), true).unwrap();
        assert_eq!(s.update(&key, &[0; 32]).unwrap().len(), 32);
        let e = s.update(&key, &[0; 1]).unwrap_err();
        assert_eq!(e.rv, CKR_DATA_LEN_RANGE);
        assert!(e.message.unwrap().contains("wraps"));
        let mut s = Stream::new(p.clone(), false).unwrap();
        assert_eq!(
            s.update(&key, &[0; 33]).unwrap_err().rv,
            CKR_ENCRYPTED_DATA_LEN_RANGE
        );
        // A partial block counts as a block.
        let mut s = Stream::new(p, true).unwrap();
        s.update(&key, &[0; 17]).unwrap();
        s.update(&key, &[0; 15]).unwrap();
        assert!(s.update(&key, &[0; 1]).is_err());
        // A full-width counter at its end: one block.
        let p = params(CKM_AES_CTR, &ctr_param(128, &[0xff; 16]));
        let mut s = Stream::new(p, true).unwrap();
        s.update(&key, &[0; 16]).unwrap();
        assert!(s.update(&key, &[0; 1]).is_err());
        for bits in [0, 129] {
            let e = ModeParams::parse(CKM_AES_CTR, &ctr_param(bits, &cb)).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
        }
    }

    #[test]
    fn partial_blocks_bad_ivs_and_bad_padding_are_refused() {
        let key = unhex(KEY256);
        for (mech, encrypting, rv) in [
            (CKM_AES_ECB, true, CKR_DATA_LEN_RANGE),
            (CKM_AES_CBC, true, CKR_DATA_LEN_RANGE),
            (CKM_AES_ECB, false, CKR_ENCRYPTED_DATA_LEN_RANGE),
            (CKM_AES_CBC, false, CKR_ENCRYPTED_DATA_LEN_RANGE),
            (CKM_AES_CBC_PAD, false, CKR_ENCRYPTED_DATA_LEN_RANGE),
        ] {
            let param = if mech == CKM_AES_ECB {
                vec![]
            } else {
                vec![0; 16]
            };
            let mut s = Stream::new(params(mech, &param), encrypting).unwrap();
            assert!(s.update(&key, &[1; 17]).is_ok());
            assert_eq!(s.finish(&key).unwrap_err().rv, rv, "{mech:#x}");
        }
        // Empty CBC-PAD ciphertext: not even one block.
        let mut s = Stream::new(params(CKM_AES_CBC_PAD, &[0; 16]), false).unwrap();
        assert_eq!(s.finish(&key).unwrap_err().rv, CKR_ENCRYPTED_DATA_LEN_RANGE);
        for (mech, len) in [
            (CKM_AES_CBC, 15usize),
            (CKM_AES_CBC_PAD, 17),
            (CKM_AES_ECB, 16),
            (CKM_AES_CTR, 16),
        ] {
            let e = ModeParams::parse(mech, &vec![0; len]).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
            assert!(e.message.unwrap().starts_with("CKM_AES_"));
        }
        // A ciphertext whose last block decrypts to no valid padding.
        let p = params(CKM_AES_CBC_PAD, &[3; 16]);
        let mut s = Stream::new(params(CKM_AES_CBC, &[3; 16]), true).unwrap();
        let mut block = [0u8; 16];
        block[15] = 17;
        let ct = s.update(&key, &block).unwrap();
        let mut s = Stream::new(p.clone(), false).unwrap();
        assert!(s.update(&key, &ct).unwrap().is_empty());
        assert_eq!(s.finish(&key).unwrap_err().rv, CKR_ENCRYPTED_DATA_INVALID);
        // Every padding length round-trips.
        for len in 0..=33 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut s = Stream::new(p.clone(), true).unwrap();
            let mut ct = s.update(&key, &plain).unwrap().to_vec();
            ct.extend_from_slice(&s.finish(&key).unwrap());
            assert_eq!(ct.len(), (len / 16 + 1) * 16);
            let mut s = Stream::new(p.clone(), false).unwrap();
            let mut back = s.update(&key, &ct).unwrap().to_vec();
            back.extend_from_slice(&s.finish(&key).unwrap());
            assert_eq!(back, plain);
        }
        let mut s = Stream::new(params(CKM_AES_ECB, &[]), true).unwrap();
        assert_eq!(
            s.update(&[0; 20], &[0; 16]).unwrap_err().rv,
            CKR_KEY_SIZE_RANGE
        );
    }

    /// SP 800-38B D.1 to D.3 (RFC 4493 §4 for AES-128).
    #[test]
    fn cmac_matches_sp800_38b() {
        let msg = unhex(PLAIN);
        let cases: [(&str, [&str; 4]); 3] = [
            (
                KEY128,
                [
                    "bb1d6929e95937287fa37d129b756746",
                    "070a16b46b4d4144f79bdd9dd04a287c",
                    "dfa66747de9ae63030ca32611497c827",
                    "51f0bebf7e3b9d92fc49741779363cfe",
                ],
            ),
            (
                KEY192,
                [
                    "d17ddf46adaacde531cac483de7a9367",
                    "9e99a7bf31e710900662f65e617c5184",
                    "8a1de5be2eb31aad089a82e6ee908b0e",
                    "a1d5df0eed790f794d77589659f39a11",
                ],
            ),
            (
                KEY256,
                [
                    "028962f61b7bf89efc6b551f4667d983",
                    "28a7023f452e8f82bd4bf28d8c37c35c",
                    "aaf3d8f1de5640c232f5b169b9c911e6",
                    "e1992190549f6ed5696a2c056c315410",
                ],
            ),
        ];
        for (key, tags) in cases {
            let key = unhex(key);
            for (len, tag) in [0usize, 16, 40, 64].into_iter().zip(tags) {
                let tag = unhex(tag);
                assert_eq!(cmac(&key, &msg[..len], 16).unwrap(), tag, "{len}");
                cmac_verify(&key, &msg[..len], 16, &tag).unwrap();
                assert_eq!(cmac(&key, &msg[..len], 4).unwrap(), tag[..4]);
                let mut bad = tag.clone();
                bad[0] ^= 1;
                let e = cmac_verify(&key, &msg[..len], 16, &bad).unwrap_err();
                assert_eq!(e.rv, CKR_SIGNATURE_INVALID);
                let e = cmac_verify(&key, &msg[..len], 16, &tag[..8]).unwrap_err();
                assert_eq!(e.rv, CKR_SIGNATURE_LEN_RANGE);
            }
        }
    }

    #[test]
    fn cmac_lengths_come_from_the_parameters() {
        assert_eq!(cmac_len(CKM_AES_CMAC, &[]).unwrap(), 16);
        assert_eq!(
            cmac_len(CKM_AES_CMAC, &[0; 8]).unwrap_err().rv,
            CKR_MECHANISM_PARAM_INVALID
        );
        for len in 1..=16 as CK_ULONG {
            let p = len.to_ne_bytes();
            assert_eq!(cmac_len(CKM_AES_CMAC_GENERAL, &p).unwrap(), len as usize);
        }
        for bad in [
            &(0 as CK_ULONG).to_ne_bytes()[..],
            &(17 as CK_ULONG).to_ne_bytes(),
            &[],
        ] {
            let e = cmac_len(CKM_AES_CMAC_GENERAL, bad).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
        }
    }

    #[test]
    fn subkeys_differ_from_the_key_and_each_other() {
        for len in [16, 24, 32] {
            let k = vec![9u8; len];
            let a = subkey(&k, BLOCK_MODES_INFO).unwrap();
            let b = subkey(&k, CMAC_INFO).unwrap();
            assert_eq!((a.len(), b.len()), (len, len));
            assert_ne!(&a[..], &k[..]);
            assert_ne!(&a[..], &b[..]);
            assert_eq!(&subkey(&k, CMAC_INFO).unwrap()[..], &b[..]);
        }
    }
}
