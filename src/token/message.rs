//! The PKCS#11 3.0 message-based API for AES-GCM (§5.9, §5.11): `C_MessageEncryptInit`, `C_EncryptMessage`, `C_MessageEncryptFinal` and their decryption twins.
//!
//! One operation encrypts (decrypts) any number of messages under one key,
//! each with its own `CK_GCM_MESSAGE_PARAMS`. Each message is one
//! single-part GCM operation of `crypt.rs` — the same IV record (a derived
//! key's IVs in the store, a session key's in memory: a repeat is refused
//! and nothing released), the same audit record committed before anything
//! leaves, the same tag lengths.
//!
//! The IV (`ivGenerator`):
//! - `CKG_GENERATE` and `CKG_GENERATE_COUNTER`: SP 800-38D §8.2.1's
//!   deterministic construction. A 12-byte IV: the caller's first
//!   `ulIvFixedBits` bits (whole bytes, at most 64) are the fixed field, the
//!   rest (at least 32 bits) the invocation field, a counter that starts at
//!   a random value (from the backing HSM) for each operation and grows by
//!   one per message, modulo its width; an operation that would come back
//!   to its start is refused (`CKR_DATA_LEN_RANGE`), so no IV repeats within
//!   it. Across operations the IV record refuses the (unlikely) repeat.
//! - `CKG_GENERATE_RANDOM`: the invocation field is drawn from the backing
//!   HSM's RNG for each message (§8.2.2).
//! - `CKG_NO_GENERATE`: the caller's IV, as `C_Encrypt` takes it (allowed:
//!   the IV record still refuses a repeat).
//!
//! The generated IV is written back into the caller's `pIv`, the tag into
//! `pTag`. Decryption takes the caller's IV and tag (`ivGenerator` is not
//! used); a tag that does not match is `CKR_ENCRYPTED_DATA_INVALID`.
//! `C_EncryptMessageBegin`/`Next` (one message in parts) are not
//! implemented.

#![forbid(unsafe_code)]

use super::crypt::{CryptOp, MAX_RECORDED_IV};
use super::session::UsedIvs;
use super::*;

/// A message-based encryption or decryption in progress.
pub(super) struct MsgOp {
    epoch: u64,
    asset: Option<i64>,
    keys: VersionKeys,
    ivs: Option<UsedIvs>,
    name: String,
    /// `CKG_GENERATE(_COUNTER)`: the counter's start (random) and the
    /// messages counted so far.
    start: Option<u128>,
    count: u128,
}

/// The caller's `CK_GCM_MESSAGE_PARAMS` of one message: its IV (written
/// when generated) and tag (written when encrypting, read when decrypting).
pub struct MessageParams<'a> {
    pub iv: &'a mut [u8],
    pub fixed_bits: CK_ULONG,
    pub generator: CK_GENERATOR_FUNCTION,
    pub tag: &'a mut [u8],
}

fn slot(s: &mut Session, encrypting: bool) -> &mut OpSlot<MsgOp> {
    if encrypting {
        &mut s.msg_encrypt
    } else {
        &mut s.msg_decrypt
    }
}

fn bad(why: String) -> Error {
    Error::with(
        CKR_MECHANISM_PARAM_INVALID,
        format!("CKM_AES_GCM message: {why}"),
    )
}

impl Provider {
    /// `C_MessageEncryptInit` / `C_MessageDecryptInit` with `CKM_AES_GCM`.
    pub fn message_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        encrypting: bool,
    ) -> Result<()> {
        let session = self.session(h)?;
        slot(&mut lock(&session), encrypting).ensure_idle()?;
        if mech != CKM_AES_GCM {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        let epoch = self.login.epoch();
        self.live(epoch)?;
        let k = self.aes_keys(h, CKM_AES_GCM, key, encrypting, epoch)?;
        let op = MsgOp {
            epoch,
            asset: k.asset,
            keys: k.keys,
            ivs: k.ivs,
            name: k.name,
            start: None,
            count: 0,
        };
        let mut s = lock(&session);
        slot(&mut s, encrypting).start(op)
    }

    /// `C_MessageEncryptFinal` / `C_MessageDecryptFinal`.
    pub fn message_final(&self, h: CK_SESSION_HANDLE, encrypting: bool) -> Result<()> {
        self.in_session(h, |s| slot(s, encrypting).take().map(|_| ()))
    }

    /// The IV of the next message to encrypt, per `p.generator`.
    fn next_iv(&self, op: &mut MsgOp, p: &MessageParams) -> Result<Vec<u8>> {
        let mut iv = p.iv.to_vec();
        if p.generator == CKG_NO_GENERATE {
            return Ok(iv);
        }
        if iv.len() != 12 {
            return Err(bad(format!(
                "a generated IV is 12 bytes (SP 800-38D §8.2); ulIvLen is {}",
                iv.len()
            )));
        }
        if !p.fixed_bits.is_multiple_of(8) || p.fixed_bits > 64 {
            return Err(bad(format!(
                "ulIvFixedBits {} must be whole bytes, at most 64 (the invocation field keeps at \
                 least 32 bits)",
                p.fixed_bits
            )));
        }
        let fixed = p.fixed_bits as usize / 8;
        let field = &mut iv[fixed..];
        let bits = 8 * field.len() as u32;
        match p.generator {
            CKG_GENERATE | CKG_GENERATE_COUNTER => {
                let start = match op.start {
                    Some(s) => s,
                    None => {
                        let mut r = [0u8; 16];
                        self.backend.random(&mut r)?;
                        let s = u128::from_be_bytes(r) >> (128 - bits);
                        op.start = Some(s);
                        s
                    }
                };
                if op.count >= 1u128 << bits {
                    return Err(Error::with(
                        CKR_DATA_LEN_RANGE,
                        format!(
                            "CKM_AES_GCM message: the {bits}-bit IV counter of this operation is \
                             used up; start a new operation (C_MessageEncryptInit)"
                        ),
                    ));
                }
                let value = start.wrapping_add(op.count) & ((1u128 << bits) - 1);
                field.copy_from_slice(&value.to_be_bytes()[16 - field.len()..]);
                op.count += 1;
            }
            CKG_GENERATE_RANDOM => self.backend.random(field)?,
            g => return Err(bad(format!("ivGenerator {g} is not one p11derive knows"))),
        }
        Ok(iv)
    }

    /// `C_EncryptMessage`: `out` `None` asks for the ciphertext's length
    /// (the plaintext's; the tag goes to `pTag`).
    pub fn encrypt_message(
        &self,
        h: CK_SESSION_HANDLE,
        p: &mut MessageParams,
        aad: &[u8],
        plain: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let Some(out) = out else {
            self.in_session(h, |s| slot(s, true).peek().map(|_| ()))?;
            return Ok(plain.len());
        };
        let (epoch, asset, keys, ivs, name, iv) = self.in_session(h, |s| {
            let op = slot(s, true).peek()?;
            let iv = self.next_iv(op, p)?;
            Ok((
                op.epoch,
                op.asset,
                op.keys.clone(),
                op.ivs.clone(),
                op.name.clone(),
                iv,
            ))
        })?;
        self.live(epoch)?;
        if iv.len() > MAX_RECORDED_IV {
            return Err(bad(format!(
                "a {}-byte IV; at most {MAX_RECORDED_IV}",
                iv.len()
            )));
        }
        let params = GcmParams::new(iv.clone(), None, aad.to_vec(), 8 * p.tag.len() as CK_ULONG)?;
        self.check_tag_len(&params)?;
        gcm::check_data_len(plain.len(), true)?;
        let audit = OpAudit::new(h, name, asset.is_none(), CKM_AES_GCM);
        let op = CryptOp::message(epoch, asset, keys, params, ivs, plain, audit);
        let mut sealed = zeroize::Zeroizing::new(vec![0u8; plain.len() + p.tag.len()]);
        let n = self.complete_encrypt(&op, &mut sealed)?;
        let (ct, tag) = sealed[..n].split_at(plain.len());
        out[..ct.len()].copy_from_slice(ct);
        p.tag.copy_from_slice(tag);
        p.iv.copy_from_slice(&iv);
        Ok(ct.len())
    }

    /// `C_DecryptMessage`: the caller's IV and tag; `out` `None` asks for the
    /// plaintext's length.
    pub fn decrypt_message(
        &self,
        h: CK_SESSION_HANDLE,
        p: &mut MessageParams,
        aad: &[u8],
        ct: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let (epoch, asset, keys, name) = self.in_session(h, |s| {
            let op = slot(s, false).peek()?;
            Ok((op.epoch, op.asset, op.keys.clone(), op.name.clone()))
        })?;
        let Some(out) = out else {
            return Ok(ct.len());
        };
        self.live(epoch)?;
        let params = GcmParams::new(
            p.iv.to_vec(),
            None,
            aad.to_vec(),
            8 * p.tag.len() as CK_ULONG,
        )?;
        self.check_tag_len(&params)?;
        gcm::check_data_len(ct.len(), false)?;
        let mut audit = OpAudit::new(h, name, asset.is_none(), CKM_AES_GCM);
        let data = [ct, &p.tag[..]].concat();
        audit.input.update(&data);
        let op = CryptOp::message(epoch, asset, keys, params, None, &data, audit);
        let mut plain = zeroize::Zeroizing::new(vec![0u8; ct.len()]);
        let n = self.complete_decrypt(&op, &mut plain)?;
        out[..n].copy_from_slice(&plain[..n]);
        Ok(n)
    }
}
